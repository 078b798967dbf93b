"""Run-folder logging: JSONL metrics (rank 0), optional TensorBoard, and a loss/accuracy plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricLogger:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard if installed."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            prefix = record.get("kind", "step")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record.get("step", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def plot_run(run_dir: Path) -> Path | None:
    """Training loss per step and test accuracy per epoch → ``plot.png`` (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax0.plot([r["step"] for r in steps], [r["loss"] for r in steps])
    ax0.set(xlabel="step", ylabel="train loss", title="training loss")
    for key in ("test_top1", "ema_test_top1"):
        pts = [(r["epoch"], r[key]) for r in epochs if key in r]
        if pts:
            ax1.plot(*zip(*pts), marker="o", label=key)
    ax1.set(xlabel="epoch", ylabel="top-1 (%)", title="test accuracy")
    ax1.legend()
    fig.tight_layout()
    out = run_dir / "plot.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
