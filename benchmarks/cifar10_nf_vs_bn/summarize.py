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

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (x, y) in curves.items():
        ax.plot(x, y, label=name, linestyle="-" if name.startswith("nf") else "--")
    ax.set(xlabel="epoch", ylabel="training loss (logged steps)", title="CIFAR-10, reduced budget (2-core CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "loss_curves.png", dpi=110)


def _config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


if __name__ == "__main__":
    main()
