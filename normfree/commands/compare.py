"""``normfree compare MODEL... --data DATA --out-dir DIR``: SPP figure at init + a training results table."""
from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_batch_size, add_data, add_out_dir, alias


def _run(args: argparse.Namespace) -> None:
    from ..train.compare import compare

    extra = {k: v for k, v in (("weight_decay", args.weight_decay), ("warmup_epochs", args.warmup_epochs),
                               ("eval_batch_size", args.eval_batch_size), ("init", args.init)) if v is not None}
    compare(args.models, args.data, args.out_dir, batch_sizes=args.batch_size, epochs=args.epochs, lr=args.lr,
            lr_batch=args.lr_batch, train_subset=args.train_subset, test_subset=args.test_subset,
            spp_batch=args.spp_batch, spp_skipinit_gain=args.spp_skipinit_gain, seed=args.seed,
            device=args.device, **extra)
    print(f"wrote {args.out_dir}/spp.png, {args.out_dir}/curves.png and {args.out_dir}/results.{{md,csv,json}}")
    print((Path(args.out_dir) / "results.md").read_text())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="SPP figure + training table for several models, same recipe",
                       description="Compare models (e.g. nf_cifar_resnet20 and its baselines): one SPP "
                                   "figure of all of them at init and a results table (accuracy, wall time, "
                                   "peak memory, throughput) from the training engine at each batch size, "
                                   "with the same budget and recipe for all. Fixup and revisited BN train "
                                   "with the optimizer groups their papers prescribe. See docs/baselines.md.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="registered name, or NAME:key=value,...")
    add_data(p, "training and test data", required=True)
    add_out_dir(p, "output folder (created)", required=True)
    add_batch_size(p, [128, 8], "batch sizes to train each model at (default: 128 8)", old=("--batch-sizes",),
                   nargs="+", metavar="B")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.1, help="peak lr at --lr-batch; linear in the batch")
    p.add_argument("--lr-batch", type=int, default=128)
    p.add_argument("--train-subset", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--test-subset", type=int, default=0, help="first N test images (0 = all)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--init", help="initialization for every run: auto (default: gradinit_*/autoinit_* get "
                                  "theirs), default, autoinit, gradinit[:key=value,...]")
    p.add_argument("--spp-batch-size", dest="spp_batch", type=int, default=16,
                   help="images in the SPP figure's batch (default: 16)")
    alias(p, "--spp-batch", "--spp-batch-size", "spp_batch", type=int)
    p.add_argument("--spp-skipinit-gain", type=float,
                   help="for the figure only: initial skip gain of the NF nets (officially 0: flat curves)")
    p.add_argument("--seed", type=int, nargs="+", default=[0], metavar="S",
                   help="one or more seeds per run; several give the mean and min-max band in curves.png")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run)
