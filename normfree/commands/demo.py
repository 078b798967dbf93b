"""``normfree demo``: the model table, then the paper's signal-propagation story at ResNet-50 depth.

Three networks at initialization on N(0,1) images: the BN→ReLU ResNet-50, the NF-ResNet-50 with plain
He-initialized convs (the mean shift), and the NF-ResNet-50 with Scaled WS (no mean shift, variance on
the expected 1 + k·α² curve). NF skip gains are 1 so the curves show the residual branches (with the
official 0 every block output would equal its shortcut). No data, no GPU needed.
"""
from __future__ import annotations

import argparse
import time

from ..analysis.measure import measure, write
from .models import print_table
from .options import add_batch_size, add_image_size, add_out_dir

STORY = ("bn_resnet50", "nf_resnet50:std_conv=False", "nf_resnet50")


def _run(args: argparse.Namespace) -> None:
    print_table(args.pattern)
    specs = [f"{s}{',' if ':' in s else ':'}width={args.width:g}" if args.width != 4 else s for s in STORY]
    print(f"\nSignal propagation at initialization: {', '.join(specs)}; NF skip gains 1; "
          f"N(0,1) inputs {args.batch_size}x3x{args.image_size}x{args.image_size}")
    start = time.perf_counter()
    results = measure(specs, batch=args.batch_size, input_size=args.image_size, skipinit_gain=1.0)
    print(f"measured in {time.perf_counter() - start:.1f}s\n")
    width = f"width {args.width:g}" + (" (official)" if args.width == 4 else " (reduced; official 4)")
    write(results, args.out_dir,
          title=f"ResNet-50 depth, {width}, {args.image_size}px N(0,1) inputs, batch {args.batch_size}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="model table and the paper's signal-propagation figure (CPU, ~1 min)")
    add_out_dir(p, "folder for spp.png/json/csv (default: out/demo)", default="out/demo")
    add_batch_size(p, 16, "images per measurement (default: 16)", old=("--batch",))
    add_image_size(p, 224, "image size (default: 224)", old=("--input-size",))
    p.add_argument("--width", type=float, default=4, help="channel multiplier (4 = official ResNet-50)")
    p.add_argument("--pattern", default="nf_", help="which models the table shows")
    p.set_defaults(func=_run)
