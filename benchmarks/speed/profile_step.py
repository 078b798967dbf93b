"""Where a CPU training step's time goes: torch.profiler over NF model and its BN twin.

Usage::

    nice -n 10 .venv/bin/python benchmarks/speed/profile_step.py nf_resnet50 --batch 16 --size 128
    # with timm installed, also profile timm models: --timm nf_resnet50 --timm resnet50
"""
from __future__ import annotations


import torch

import normfree
from _args import step_parser  # this folder: scripts are run by path
from normfree.bench import BenchConfig, make_step


def main() -> None:
    p = step_parser(__doc__)
    p.add_argument("--deploy", action="store_true")
    p.add_argument("--channels-last", action="store_true", help="model and input in channels_last")
    p.add_argument("--rows", type=int, default=14)
    p.add_argument("--timm", action="append", default=[], metavar="NAME", help="also a timm model")
    args = p.parse_args()
    cfg = BenchConfig(mode=args.mode, batch=args.batch, size=args.size, channels_last=args.channels_last)
    names = [args.model, "bn_" + args.model.removeprefix("nf_"), *(f"timm:{t}" for t in args.timm)]
    for name in names:
        if name.startswith("timm:"):
            import timm
            model = timm.create_model(name[5:])
        else:
            model = normfree.create_model(name)
        if args.deploy and not name.startswith("timm:"):
            model = normfree.deploy(model)
        step, _ = make_step(model, cfg)
        step()  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        print(f"== {name} {args.mode}{' deploy' if args.deploy else ''} batch={args.batch} "
              f"size={args.size}: {total / 1e3:.0f} ms self CPU total")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
            print(f"  {e.key:48s} {e.self_cpu_time_total / 1e3:9.1f} ms {100 * e.self_cpu_time_total / total:5.1f} %"
                  f"  x{e.count}")
        ws = [e for e in events if "ScaledWS" in e.key]
        for e in ws:
            print(f"  [incl.] {e.key:40s} {e.cpu_time_total / 1e3:9.1f} ms (with children)")


if __name__ == "__main__":
    main()
