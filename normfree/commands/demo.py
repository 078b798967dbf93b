"""``normfree demo``: the main job on an embedded default (no data, no GPU)."""
from __future__ import annotations

import argparse
import time

import torch

from ..registry import create_model
from .models import print_table


def _run(args: argparse.Namespace) -> None:
    print_table(args.pattern)
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    x = torch.randn(args.batch, 3, model.input_size, model.input_size)
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(x)
    elapsed = time.perf_counter() - start
    print(f"\n{args.model}: forward pass on a random {tuple(x.shape)} batch -> logits {tuple(logits.shape)}"
          f" in {elapsed:.2f}s; logit std {logits.std():.4f}, finite: {bool(torch.isfinite(logits).all())}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="model table and a forward pass (no data or GPU needed)")
    p.add_argument("--model", default="nf_resnet50")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--pattern", default="nf_", help="which models the table shows")
    p.set_defaults(func=_run)
