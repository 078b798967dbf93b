"""``normfree spp MODEL [MODEL ...] --out DIR``: signal-propagation plots, numbers and a diagnosis."""
from __future__ import annotations

import argparse

import torch

from ..analysis.measure import measure, write
from ..checks import NONNEGATIVE_INT, Domain, check_number, check_out_dir, require_device


def _run(args: argparse.Namespace) -> None:
    check_number("--batch", args.batch, Domain(integer=True, low=2), why="SPP statistics need at least 2 examples")
    if args.input_size is not None:
        check_number("--input-size", args.input_size, Domain(integer=True, low=1, high=8192))
    if args.skipinit_gain is not None:
        check_number("--skipinit-gain", args.skipinit_gain, Domain())
    check_number("--seed", args.seed, NONNEGATIVE_INT)
    require_device("--device", args.device)
    check_out_dir("--out", args.out)
    results = measure(args.models, batch=args.batch, input_size=args.input_size,
                      skipinit_gain=args.skipinit_gain, checkpoint=args.checkpoint, data=args.data,
                      gradients=args.grads, seed=args.seed, device=args.device)
    source = f"images from {args.data}" if args.data else "N(0,1) inputs"
    write(results, args.out, title=f"signal propagation, {source}, batch {args.batch}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spp", help="signal-propagation plots: PNG, JSON, CSV and a diagnosis",
                       description="Measure signal-propagation plots (Brock et al. 2021) of one or more "
                                   "models at initialization (or from a checkpoint) and diagnose them. "
                                   "MODEL is a registered name, optionally with options: "
                                   "nf_resnet50:std_conv=False,width=1")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--input-size", type=int, help="image size (default: each model's own)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--skipinit-gain", type=float,
                   help="initial skip gain for models that have one; 1 shows the paper's curves")
    p.add_argument("--checkpoint", help="safetensors or torch state-dict file (one model only)")
    p.add_argument("--data", help=".npz file or folder (x: uint8 NxHxWxC) instead of N(0,1) inputs")
    p.add_argument("--grads", action="store_true", help="also measure gradients (CE on random labels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=_run)
