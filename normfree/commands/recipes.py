"""``normfree recipes``: the named training recipes and their values."""
from __future__ import annotations

import argparse

from .options import add_flag


def _run(args: argparse.Namespace) -> None:
    from ..train.recipes import format_recipes, list_recipes

    print("\n".join(list_recipes()) if args.names else format_recipes())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the named training recipes (normfree train --recipe NAME)",
                       description="Print every shipped training recipe with its TrainConfig values.")
    add_flag(p, "--names", help="print only the names")
    p.set_defaults(func=_run)
