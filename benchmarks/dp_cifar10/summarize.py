"""``results.csv``: one row per finished run of the DP plan (exp/<table>/<run>/summary.json + config.yaml).

``top1`` is the final test top-1 of the EMA weights when the run kept an EMA (as De et al. report), else
of the raw weights; ``epsilon`` is the privacy spent by the end of the run at ``delta``.

Usage (repository root): .venv/bin/python benchmarks/dp_cifar10/summarize.py
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lanes import expand_plan, runner  # noqa: E402  (this folder)

COLUMNS = ["net", "model", "recipe", "epsilon", "delta", "noise_multiplier", "batch", "augmult", "steps", "seed",
           "top1", "wall_s", "device"]


def net_kind(model: str) -> str:
    """NF, or the family of the normalized twin (GN+WS is De et al.'s)."""
    if model.startswith("gnws_"):
        return "GN+WS"
    return "NF" if model.startswith("nf") else model.split("_", 1)[0]


def row(run_dir: Path) -> dict[str, object]:
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    top1 = summary.get("ema_test_top1", summary["test_top1"])
    return {"net": net_kind(cfg["model"]), "model": cfg["model"], "recipe": cfg["recipe"],
            "epsilon": f"{summary['epsilon']:.3f}", "delta": cfg["delta"],
            "noise_multiplier": f"{summary['noise_multiplier']:.4f}", "batch": cfg["batch_size"],
            "augmult": cfg["augmult"], "steps": summary["steps"], "seed": cfg["seed"], "top1": f"{top1:.2f}",
            "wall_s": f"{summary['total_wall_time_s']:.0f}", "device": summary["device"]}


def main() -> None:
    rows = [row(r["dir"]) for r in expand_plan() if runner.state(r) == "done"]
    with open(HERE / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} finished run(s) -> {HERE / 'results.csv'}")


if __name__ == "__main__":
    main()
