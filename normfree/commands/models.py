"""``normfree models [PATTERN]``: the model table with parameters and multiply-adds."""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Iterator

import torch

from ..errors import ModelSpecError
from ..profile import count_macs, count_params
from ..registry import create_model, get_entry, list_models


TABLE = Path(__file__).resolve().parents[1] / "model_table.json"
"""Parameters, multiply-adds and resolution of every registered model at its defaults, so that listing
all of them takes no model building; ``python tools/model_table.py`` rewrites it and
``tests/test_cli_vocabulary.py`` checks it against fresh counts."""


def count_model(name: str) -> dict[str, int]:
    """``params``, ``macs`` (one image at ``res``) and ``res`` of ``name`` at its defaults, counted on the
    ``meta`` device: shapes only, no memory, no compute."""
    with torch.device("meta"):
        model = create_model(name)
    size = model.input_size
    return {"params": count_params(model), "macs": count_macs(model, size), "res": size}


def model_rows(pattern: str | None = None) -> Iterator[tuple[str, float, float, int, str]]:
    """(name, params in M, multiply-adds in G at the default resolution, resolution, description):
    from :data:`TABLE`, or counted for models it does not hold (registered by the user)."""
    names = list_models(pattern)
    if not names:
        raise ModelSpecError(f"no model matches {pattern!r}; `normfree models` lists all")
    table = json.loads(TABLE.read_text()) if TABLE.is_file() else {}
    for name in names:
        row = table.get(name) or count_model(name)
        yield name, row["params"] / 1e6, row["macs"] / 1e9, row["res"], get_entry(name).description


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
