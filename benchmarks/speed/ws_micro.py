"""Scaled WS alone: forward + backward over every conv weight of a model, three implementations.

- ``normfree``: ``ScaledStdConv2d.standardized_weight`` (the custom autograd Function: vector_norm
  variance, fused BatchNorm-backward kernel);
- ``textbook``: ``standardized_weight_reference`` under plain autograd (what the Function replaces);
- ``F.batch_norm``: the weight viewed as (1, out, fan_in) through ``F.batch_norm`` with the gain as
  its weight (timm's way of computing WS, (var + eps) convention).

Usage (repository root)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/speed/ws_micro.py nf_resnet50 --repeats 9
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import normfree
from normfree.layers import ScaledStdConv2d


def batch_norm_ws(conv: ScaledStdConv2d) -> torch.Tensor:
    w = conv.weight
    gain = conv.gain / math.sqrt(conv.fan_in)
    return F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, gain, training=True, momentum=0.0,
                        eps=1e-5).reshape_as(w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    torch.manual_seed(0)
    convs = [m for m in normfree.create_model(args.model).modules() if isinstance(m, ScaledStdConv2d)]
    grads = [torch.randn_like(c.weight) for c in convs]
    impls = {"normfree": lambda c: c.standardized_weight(),
             "textbook": lambda c: c.standardized_weight_reference(),
             "F.batch_norm": batch_norm_ws}

    def run(fn) -> float:
        start = time.perf_counter()
        for conv, g in zip(convs, grads):
            fn(conv).backward(g)
            conv.weight.grad = conv.gain.grad = None
        return time.perf_counter() - start

    times: dict[str, list[float]] = {k: [] for k in impls}
    for fn in impls.values():
        run(fn)  # warm-up
    for _ in range(args.repeats):  # interleaved rounds
        for name, fn in impls.items():
            times[name].append(run(fn))
    n = sum(c.weight.numel() for c in convs)
    print(f"{args.model}: {len(convs)} WS convs, {n / 1e6:.1f} M weights, threads={torch.get_num_threads()}, "
          f"torch {torch.__version__}, forward + backward per pass over all convs, {args.repeats} rounds")
    for name, ts in times.items():
        print(f"  {name:13s} median {1e3 * statistics.median(ts):6.1f} ms  [{1e3 * min(ts):6.1f}, "
              f"{1e3 * max(ts):6.1f}]")


if __name__ == "__main__":
    main()
