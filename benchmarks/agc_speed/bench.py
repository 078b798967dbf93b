"""clip_grad_agc_ (grouped by shape, batched ops) vs a per-parameter Python loop of the same formula.

Usage (repository root): OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/agc_speed/bench.py
"""
from __future__ import annotations

import time

import torch

import normfree
from normfree.train.agc import agc_params, clip_grad_agc_


def loop_agc(specs, clip: float = 0.01, eps: float = 1e-3) -> None:
    """Reference: one parameter at a time (what most ports do)."""
    for p, dim in specs:
        if dim is None:
            wn, gn = p.detach().norm().clamp_min(eps), p.grad.norm()
        else:
            red = tuple(d for d in range(p.ndim) if d != dim)
            wn = torch.linalg.vector_norm(p.detach(), dim=red, keepdim=True).clamp_min(eps)
            gn = torch.linalg.vector_norm(p.grad, dim=red, keepdim=True)
        mx = wn * clip
        p.grad.mul_(torch.where(gn > mx, mx / gn.clamp_min(1e-6), torch.ones_like(gn)))


def timeit(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    torch.manual_seed(0)
    for name in ("nf_cifar_resnet20", "nf_resnet50"):
        model = normfree.create_model(name)
        specs = agc_params(model, exclude=(model.fc,))
        for p, _ in specs:
            p.grad = torch.randn_like(p) * 1e-3
        vec, loop = timeit(lambda: clip_grad_agc_(specs)), timeit(lambda: loop_agc(specs))
        shapes = len({tuple(p.shape) for p, _ in specs})
        print(f"| {name} | {len(specs)} | {shapes} | {vec * 1e3:.1f} | {loop * 1e3:.1f} |")


if __name__ == "__main__":
    print("| model | params clipped | distinct shapes | clip_grad_agc_ (ms) | per-param loop (ms) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    main()
