"""Training-step throughput of every variant in ONE process, interleaved, so that load from other jobs on
the shared machine hits all variants alike (the per-run img/s of `normfree compare` come from separate
processes at different times).

Usage: OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/baselines_cifar10/throughput.py [OUT.json]
Per round and batch size, each variant does one warm-up step and then `steps` timed SGD steps (forward,
cross-entropy, backward, update) on random 32x32 inputs; the median over rounds is reported.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import normfree
from normfree.train.optim import build_param_groups

PREFIXES = ["nf", "bn", "relubn", "revbn", "gnws", "evob0", "evos0", "fixup", "skipinit"]
SETTINGS = {128: 2, 8: 16}  # batch size -> timed steps per round (256 and 128 images)
ROUNDS = 5


def main(out: str | None) -> None:
    torch.manual_seed(0)
    models = {p: normfree.create_model(f"{p}_cifar_resnet20").train() for p in PREFIXES}
    opts = {p: torch.optim.SGD(build_param_groups(m, "auto", 0.01, 5e-4), lr=0.01, momentum=0.9, nesterov=True)
            for p, m in models.items()}
    times: dict[tuple[str, int], list[float]] = {(p, b): [] for b in SETTINGS for p in PREFIXES}
    for r in range(ROUNDS):
        for b, steps in SETTINGS.items():
            x, y = torch.randn(b, 3, 32, 32), torch.randint(0, 10, (b,))
            for p in PREFIXES[r % len(PREFIXES):] + PREFIXES[:r % len(PREFIXES)]:  # rotate the order
                model, opt = models[p], opts[p]
                for i in range(steps + 1):
                    if i == 1:
                        t0 = time.perf_counter()
                    loss = F.cross_entropy(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                times[p, b].append(steps * b / (time.perf_counter() - t0))
        print(f"round {r + 1}/{ROUNDS} done, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    rows = [{"model": f"{p}_cifar_resnet20", "batch_size": b, "img_per_s_median": statistics.median(v),
             "img_per_s_rounds": v} for (p, b), v in times.items()]
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": ROUNDS,
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "rows": rows}
    print("| model | batch | img/s (median of %d rounds) |\n|---|---:|---:|" % ROUNDS)
    for row in rows:
        print(f"| {row['model']} | {row['batch_size']} | {row['img_per_s_median']:.1f} |")
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
