"""``normfree models [PATTERN]``: the model table with parameters and multiply-adds."""
from __future__ import annotations

import argparse
import itertools
from typing import Iterator

import torch

from ..errors import ModelSpecError
from ..profile import count_macs, count_params
from ..registry import create_model, get_entry, list_models


def model_rows(pattern: str | None = None) -> Iterator[tuple[str, float, float, int, str]]:
    """(name, params in M, multiply-adds in G at the default resolution, resolution, description).

    Models are built on the ``meta`` device: shapes only, no memory, no compute.
    """
    names = list_models(pattern)
    if not names:
        raise ModelSpecError(f"no model matches {pattern!r}; `normfree models` lists all")
    for name in names:
        with torch.device("meta"):
            model = create_model(name)
        size = model.input_size
        yield (name, count_params(model) / 1e6, count_macs(model, size) / 1e9, size,
               get_entry(name).description)


def print_table(pattern: str | None = None) -> None:
    rows = model_rows(pattern)
    first = next(rows)  # raises for an empty match before the header is printed
    print(f"{'model':<22} {'params (M)':>10} {'MACs (G)':>9} {'res':>4}  description")
    for name, params, macs, size, desc in itertools.chain([first], rows):
        print(f"{name:<22} {params:>10.2f} {macs:>9.3f} {size:>4}  {desc}", flush=True)


def _run(args: argparse.Namespace) -> None:
    print_table(args.pattern)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models with parameters and multiply-adds",
                       description="List registered models with parameter counts (M) and multiply-adds "
                                   "(G, official convention) at each model's default resolution.")
    p.add_argument("pattern", nargs="?", help="shell pattern or substring, e.g. 'nf_resnet*' or cifar")
    p.set_defaults(func=_run)
