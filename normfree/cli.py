"""The ``normfree`` command line. Each subcommand lives in :mod:`normfree.commands`."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from .errors import NormfreeError, TrainingInterrupted

SUBCOMMANDS = ("demo", "models", "spp", "train", "recipes", "eval", "convert", "bench", "compare", "speedrun")
"""Modules of :mod:`normfree.commands`; each defines ``add_parser(subparsers)`` that sets ``func``."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="normfree", description="Normalizer-free networks: models, analysis, training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"normfree.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. The project's own errors (bad options, files, model names) and OS errors on
    the user's paths (missing, unreadable, not writable) become one line and exit status 2; any other
    exception is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as err:
        print(f"normfree {args.command}: {err}", file=sys.stderr)
        return 130
    except NormfreeError as err:
        print(f"normfree {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.filename is None:  # a socket, pipe or device failure, not a path the user gave
            raise
        print(f"normfree {args.command}: error: {err.strerror or err}: {err.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"normfree {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
