"""Ablation: the folded fast path vs the plain formulation of the same NF model, and the BN twin.

Same weights, same process, interleaved repeats (normfree.bench protocol). Usage::

    nice -n 10 .venv/bin/python benchmarks/speed/fold_ablation.py nf_resnet50 --batch 16 --size 128
"""
from __future__ import annotations

import copy

import torch

import normfree
from _args import step_parser  # this folder: scripts are run by path
from normfree.bench import BenchConfig, run_benchmark
from normfree.models.blocks import set_fast_path


def main() -> None:
    p = step_parser(__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    folded = normfree.create_model(args.model)
    models = {"folded (default)": folded,
              "unfolded": set_fast_path(copy.deepcopy(folded), False),
              "bn twin": normfree.create_model("bn_" + args.model.removeprefix("nf_"))}
    cfg = BenchConfig(mode=args.mode, batch=args.batch, size=args.size, warmup=1,
                      repeats=args.repeats, steps=args.steps)
    results = run_benchmark(models, cfg)
    print(f"{args.model} {args.mode} batch={args.batch} size={args.size} threads={torch.get_num_threads()}")
    for r in results:
        print(f"{r.name:18s} {r.images_per_s:7.2f} img/s [{r.images_per_s_min:.2f}, {r.images_per_s_max:.2f}]"
              f"  latency {r.latency_ms:7.1f} ms  peak step {r.peak_step_bytes / 2**20:7.1f} MiB"
              f"  speed vs bn {r.ratio(results[-1]):.3f}x"
              f"  memory vs bn {r.peak_step_bytes / results[-1].peak_step_bytes:.3f}x")


if __name__ == "__main__":
    main()
