"""Per-step cost of the DP plan's runs on this machine, from a few private steps on random 32×32 images.

Prints, for each distinct (recipe, model) of plan.yaml, the seconds per example-augmentation (one row of
the per-example gradient computation), its ratio to an ordinary training pass per image (timed in the
same process, so the ratio holds on a loaded machine where the seconds do not) and the estimated wall
time of the full run: rows per run = steps × expected batch × augmult (evaluation adds a few percent).
No CIFAR data needed: the cost does not depend on the pixels. Takes about a minute per model on one
thread.

Usage (repository root):
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dp_cifar10/probe.py [--stage cpu_eps8] [--plain-ms MS]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lanes import EXP, expand_plan  # noqa: E402  (this folder)

from normfree.train.config import TrainConfig  # noqa: E402
from normfree.train.recipes import layer_values, load_recipe  # noqa: E402
from normfree.train.trainer import Trainer  # noqa: E402

CIFAR_TRAIN = 50_000


def plain_seconds(model: torch.nn.Module, batch: int, repeats: int = 2) -> float:
    """Seconds per image of one ordinary (non-private) training forward and backward pass at ``batch``:
    the yardstick the private cost is divided by, timed in the same process and so under the same load."""
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(repeats + 1):  # the first pass warms up
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return min(times[1:]) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="timed private steps per model (after one warm-up)")
    parser.add_argument("--batch", type=int, default=64, help="expected logical batch of the probe")
    parser.add_argument("--stage", help="probe only this stage of the plan")
    parser.add_argument("--plain-ms", type=float, help="ms per image of ordinary training measured elsewhere "
                        "(e.g. a CIFAR-10 lane's epoch time / 50000): also estimate the run at that rate")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seen = set()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for split, n in (("train", 1024), ("test", 64)):
            np.savez(Path(tmp) / f"{split}.npz", x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                     y=rng.integers(0, 10, n))
        for run in expand_plan(args.stage):
            values = layer_values(load_recipe(run["recipe"]), run["values"])
            key = (run["recipe"], values["model"], yaml.safe_dump(values.get("model_kwargs", {})))
            if key in seen:
                continue
            seen.add(key)
            probe = {**values, "data": f"npz:{tmp}", "device": "cpu", "out_dir": str(Path(tmp) / "run"),
                     "batch_size": args.batch, "epochs": 1, "noise_multiplier": 1.0, "epsilon": 0.0,
                     "augmult": min(2, values["augmult"])}  # the cost per row does not depend on K
            trainer = Trainer(TrainConfig.from_dict(probe))
            trainer.dp.backward(0)  # warm-up
            t0 = time.perf_counter()
            rows = 0
            for step in range(1, args.steps + 1):
                rows += len(trainer.dp.sample(step)) * probe["augmult"]
                trainer.dp.backward(step)
            per_row = (time.perf_counter() - t0) / max(1, rows)
            ratio = per_row / plain_seconds(trainer.model, args.batch)
            steps = values["epochs"] * (CIFAR_TRAIN // values["batch_size"])
            total_rows = steps * values["batch_size"] * values["augmult"]
            hours = per_row * total_rows / 3600
            at_lane = f", {ratio * args.plain_ms * total_rows / 3.6e6:.1f} h at --plain-ms" if args.plain_ms else ""
            print(f"{run['recipe']:22s} {values['model']:20s} {per_row * 1e3:7.1f} ms/row = {ratio:4.2f} × plain  "
                  f"{steps:6d} steps × {values['batch_size']} × {values['augmult']} rows → "
                  f"{hours:.1f} h per run here{at_lane} (1 thread, gradients only)", flush=True)
    print(f"(runs write to {EXP.relative_to(Path.cwd()) if EXP.is_relative_to(Path.cwd()) else EXP})")


if __name__ == "__main__":
    main()
