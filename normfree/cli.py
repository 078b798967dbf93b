"""The ``normfree`` command line. Each subcommand lives in :mod:`normfree.commands`."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import NormfreeError

SUBCOMMANDS = ("demo", "models", "spp", "train", "recipes", "eval", "convert", "bench", "compare", "speedrun")
"""Modules of :mod:`normfree.commands`; each defines ``add_parser(subparsers)`` that sets ``func``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normfree",
                                     description="Normalizer-free networks: models, analysis, training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"normfree.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (NormfreeError, ValueError, TypeError) as err:
        # ValueError/TypeError come from our own argument validation (create_model, layer checks).
        print(f"normfree {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"normfree {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
