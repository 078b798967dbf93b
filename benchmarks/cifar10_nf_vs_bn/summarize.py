"""Tables, results.csv and the accuracy-vs-epoch figure, regenerated from the run logs in exp/.

Usage (repository root): python benchmarks/cifar10_nf_vs_bn/summarize.py

One row per finished run goes to results.csv. ``top1`` is the final test top-1 of the weights a user
would keep: the EMA weights when the recipe keeps an EMA, else the trained weights; ``top1_flip`` the
same with flip test-time augmentation. ``recipe`` is the recipe name, followed by ``+key=value`` for
every lever the run changed relative to it (so each row says exactly how to reproduce it).
"""
from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
EXP = HERE / "exp"
COLUMNS = ["net", "model", "recipe", "batch", "epochs", "seed", "train_images", "test_images", "top1",
           "top1_flip", "wall_s", "device"]
BOOKKEEPING = {"data", "out_dir", "seed", "device", "eval_every", "log_every", "tta_flip", "recipe", "epochs",
               "batch_size", "eval_batch_size", "spp_every", "amp", "channels_last", "compile", "train_subset",
               "test_subset"}
"""Config keys that say how a run was executed or logged, not how the network was trained."""


def records(run: Path) -> list[dict[str, Any]]:
    """Epoch records of metrics.jsonl, the last one per epoch (a resumed run may repeat an epoch)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "epoch":
            by_epoch[rec["epoch"]] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def recipe_label(cfg: dict[str, Any]) -> str:
    """The recipe name plus every non-bookkeeping value that differs from the recipe."""
    from normfree.train.config import TrainConfig
    from normfree.train.recipes import layer_values, load_recipe

    name = cfg.get("recipe") or ""
    base = TrainConfig.from_dict(layer_values(load_recipe(name) if name else {})).to_dict()
    changes = []
    for key, value in cfg.items():
        if key in BOOKKEEPING:
            continue
        if key == "model_kwargs":
            changes += [f"{k}={v}" for k, v in value.items() if base["model_kwargs"].get(k) != v]
        elif base.get(key) != value:
            changes.append(f"{key}={value}")
    return "+".join([name or "defaults", *changes])


def _final(summary: dict[str, Any], key: str) -> float | None:
    value = summary.get(f"ema_test_{key}", summary.get(f"test_{key}"))
    return None if value is None else float(value)


def _count(data: str, split: str) -> int:
    """Images in a split, for logs written before summaries recorded it."""
    import numpy as np

    kind, _, folder = data.partition(":")
    if kind != "npz":
        raise ValueError(f"cannot count images of {data}")
    with np.load(Path(folder) / f"{split}.npz") as f:
        return len(f["y"])


def collect() -> list[dict[str, Any]]:
    rows = []
    for summary_path in sorted(EXP.glob("*/*/summary.json")):
        run = summary_path.parent
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        summary = json.loads(summary_path.read_text())
        if summary.get("epochs_done", 0) < cfg["epochs"]:
            continue
        n_train = summary.get("train_images") or (cfg["train_subset"] or _count(cfg["data"], "train"))
        n_test = summary.get("test_images") or (cfg["test_subset"] or _count(cfg["data"], "test"))
        rows.append({"net": cfg["model"].split("_", 1)[0], "model": cfg["model"], "recipe": recipe_label(cfg),
                     "batch": cfg["batch_size"], "epochs": cfg["epochs"], "seed": cfg["seed"],
                     "train_images": n_train, "test_images": n_test, "top1": _final(summary, "top1"),
                     "top1_flip": _final(summary, "top1_flip"),
                     "wall_s": round(summary.get("total_wall_time_s", summary["wall_time_s"]), 1),
                     "device": summary["device"], "table": run.parent.name, "cell": run.name.rsplit("_s", 1)[0],
                     "curve": [(r["epoch"], r.get("ema_test_top1", r.get("test_top1"))) for r in records(run)
                               if "test_top1" in r]})
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "top1": f"{r['top1']:.2f}",
                        "top1_flip": "" if r["top1_flip"] is None else f"{r['top1_flip']:.2f}"})


def _fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f}" if values else "–"


def table(rows: list[dict[str, Any]], name: str) -> str:
    """One line per cell: its recipe, each seed's top-1, the mean, and the mean with flip TTA."""
    cells: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["table"] == name:
            cells[r["cell"]].append(r)
    lines = [f"### {name}", "",
             "| cell | recipe | seeds: top-1 (%) | mean top-1 | mean top-1, flip TTA | wall per run (s) |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for cell, rs in cells.items():
        rs.sort(key=lambda r: r["seed"])
        seeds = ", ".join(f"s{r['seed']} {r['top1']:.2f}" for r in rs)
        flips = [r["top1_flip"] for r in rs if r["top1_flip"] is not None]
        lines.append(f"| {cell} | `{rs[0]['recipe']}` | {seeds} | {_fmt([r['top1'] for r in rs])} | "
                     f"{_fmt(flips)} | {statistics.mean(r['wall_s'] for r in rs):.0f} |")
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Test top-1 vs epoch of the headline tables: NF vs BN, mean line and range over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = sorted({r["table"] for r in rows if r["table"].startswith("headline")})
    if not tables:
        return
    fig, axes = plt.subplots(1, len(tables), figsize=(4.5 * len(tables), 3.6), squeeze=False)
    for ax, name in zip(axes[0], tables):
        for net, color in (("nf", "tab:blue"), ("bn", "tab:orange")):
            curves = [dict(r["curve"]) for r in rows if r["table"] == name and r["net"] == net]
            if not curves:
                continue
            epochs = sorted(set.intersection(*(set(c) for c in curves)))
            vals = [[c[e] for c in curves] for e in epochs]
            ax.plot(epochs, [statistics.mean(v) for v in vals], color=color,
                    label=f"{net.upper()} ({len(curves)} seeds)")
            ax.fill_between(epochs, [min(v) for v in vals], [max(v) for v in vals], color=color, alpha=0.25)
        ax.set_title(name.removeprefix("headline_").replace("_", ", "))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    rows = collect()
    write_csv(rows, HERE / "results.csv")
    names = sorted({r["table"] for r in rows})
    text = "# Results (generated by summarize.py from exp/; do not edit)\n\n" + "\n\n".join(
        table(rows, n) for n in names) + "\n"
    (HERE / "results.md").write_text(text)
    figure(rows, HERE / "accuracy_vs_epoch.png")
    print(text)


if __name__ == "__main__":
    main()
