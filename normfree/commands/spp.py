"""``normfree spp MODEL [MODEL ...] --out-dir DIR``: signal-propagation plots, numbers and a diagnosis."""
from __future__ import annotations

import argparse

import torch

from ..analysis.measure import measure, write
from ..checks import NONNEGATIVE_INT, Domain, check_number, check_out_dir, require_device
from .options import add_batch_size, add_data, add_flag, add_image_size, add_out_dir


def _run(args: argparse.Namespace) -> None:
    check_number("--batch-size", args.batch_size, Domain(integer=True, low=2),
                 why="SPP statistics need at least 2 examples")
    if args.image_size is not None:
        check_number("--image-size", args.image_size, Domain(integer=True, low=1, high=8192))
    if args.skipinit_gain is not None:
        check_number("--skipinit-gain", args.skipinit_gain, Domain())
    check_number("--seed", args.seed, NONNEGATIVE_INT)
    require_device("--device", args.device)
    check_out_dir("--out-dir", args.out_dir)
    results = measure(args.models, batch=args.batch_size, input_size=args.image_size,
                      skipinit_gain=args.skipinit_gain, checkpoint=args.checkpoint, data=args.data,
                      gradients=args.grads, seed=args.seed, device=args.device)
    source = f"images from {args.data}" if args.data else "N(0,1) inputs"
    write(results, args.out_dir, title=f"signal propagation, {source}, batch {args.batch_size}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spp", help="signal-propagation plots: PNG, JSON, CSV and a diagnosis",
                       description="Measure signal-propagation plots (Brock et al. 2021) of one or more "
                                   "models at initialization (or from a checkpoint) and diagnose them. "
                                   "MODEL is a registered name, optionally with options: "
                                   "nf_resnet50:std_conv=False,width=1")
    p.add_argument("models", nargs="+", metavar="MODEL")
    add_out_dir(p, "output folder (created)", required=True)
    add_image_size(p, None, "image size (default: each model's own; a checkpoint's: the size it was "
                            "evaluated at)", old=("--input-size",))
    add_batch_size(p, 16, "images per measurement (default: 16)", old=("--batch",))
    p.add_argument("--skipinit-gain", type=float,
                   help="initial skip gain for models that have one; 1 shows the paper's curves")
    p.add_argument("--checkpoint", help="normfree checkpoint (its class count, channels and options are "
                                        "used), or a safetensors / torch state-dict file (one model only)")
    add_data(p, "measure on images of this data set's test split instead of N(0,1) inputs")
    add_flag(p, "--grads", help="also measure gradients (CE on random labels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=_run)
