"""``python -m normfree ...`` (and ``torchrun -m normfree ...``): the same CLI as the ``normfree`` script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
