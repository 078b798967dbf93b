"""The signal entering every GELU of a speedrun net, step by step during its first training steps: what
the design screens of README.md ("Why the NF net needs so much smaller steps") rest on.

Trains ``--recipe`` with ``--set`` overrides on the first ``--train-subset`` training images (the screen's
setup: 3 epochs of 10,240 images is 30 steps) and measures normfree's signal-propagation statistics on 256
test images (in eval mode, not seen in training) after every ``--every``-th step, until ``--steps`` or the
loss stops being finite. Writes one CSV row per measured step and point.

    python benchmarks/speedrun/spp_training.py --data npz:DIR --steps 10 --set gain_lr_scale=0 --set agc_clip=0
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

import torch

from normfree.analysis import signal_propagation
from normfree.commands.speedrun import parse_settings  # the KEY=VALUE syntax of normfree speedrun --set
from normfree.train.speedrun import SpeedrunNet, get_recipe, load_cifar, train


class _Stop(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--recipe", default="nf_speedrun")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--train-subset", type=int, default=10240)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--out", default="spp_training.csv")
    args = ap.parse_args()
    torch.set_num_threads(1)
    recipe = get_recipe(args.recipe).replace(epochs=args.epochs, **parse_settings(args.set))
    data = load_cifar(args.data, torch.device("cpu"), args.train_subset, 256)
    probe = data[1][0]
    rows: list[dict[str, Any]] = []

    def measure(step: int, model: SpeedrunNet, loss: float) -> None:
        if step % args.every == 0 or not math.isfinite(loss):
            res = signal_propagation(model, probe, blocks=model.preactivation_points())
            for name, sq, var in zip(res.names, res.sq_mean, res.var):
                rows.append({"step": step, "train_loss": loss, "point": name, "sq_mean": sq, "var": var})
            print(f"step {step:3d} loss {loss:9.3g} | sq_mean " + " ".join(f"{v:.3g}" for v in res.sq_mean)
                  + " | var " + " ".join(f"{v:.3g}" for v in res.var), flush=True)
        if step >= args.steps or not math.isfinite(loss):
            raise _Stop

    try:
        train(recipe, data, 0, "cpu", log=lambda s: None, on_step=measure)
    except _Stop:
        pass
    with Path(args.out).open("w", newline="") as f:
        w = csv.DictWriter(f, ["step", "train_loss", "point", "sq_mean", "var"])
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
