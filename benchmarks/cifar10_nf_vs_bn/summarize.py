"""Results table (markdown) and plot from logs/*/summary.json and metrics.jsonl.

Usage (repository root): .venv/bin/python benchmarks/cifar10_nf_vs_bn/summarize.py
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    runs = sorted(p.parent for p in (HERE / "logs").glob("*/summary.json"))
    rows = ["| run | model | batch | lr | steps | test top-1 (%) | test top-5 (%) | test loss | wall (s) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    curves = {}
    for run in runs:
        s = json.loads((run / "summary.json").read_text())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if r["kind"] == "step"]
        cfg = _config(run)
        rows.append(f"| {run.name} | {s['model']} | {cfg['batch_size']} | {cfg['lr']:.4g} | {s['steps']} | "
                    f"{s['test_top1']:.2f} | {s['test_top5']:.2f} | {s['test_loss']:.3f} | {s['wall_time_s']:.0f} |")
        curves[run.name] = ([r["step"] / s["steps"] * s["epochs_done"] for r in steps], [r["loss"] for r in steps])
    table = "\n".join(rows)
    (HERE / "results.md").write_text(table + "\n")
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, batch in zip(axes, (128, 8)):
        for name, (x, y) in curves.items():
            if f"_bs{batch}_" not in name and not name.endswith(f"_bs{batch}"):
                continue
            k = max(1, len(y) // 12)  # moving average over ~1/4 epoch: raw per-step losses are noisy
            smooth = [sum(y[max(0, i - k + 1):i + 1]) / len(y[max(0, i - k + 1):i + 1]) for i in range(len(y))]
            ax.plot(x, smooth, label=name, linestyle="-" if name.startswith("nf") else "--")
        ax.set(xlabel="epoch", title=f"batch {batch}: training loss (moving average)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("training loss")
    fig.suptitle("CIFAR-10, reduced budget: 4000 train images, 3 epochs (2-core CPU)")
    fig.tight_layout()
    fig.savefig(HERE / "loss_curves.png", dpi=110)


def _config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


if __name__ == "__main__":
    main()
