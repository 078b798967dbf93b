"""Run-folder logging: JSONL metrics (rank 0), optional TensorBoard, and a loss/accuracy plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml

from ..figures import accuracy_limits, data_label, legend_below, new_figure, save

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def _run_title(run_dir: Path) -> str:
    """Model, data, batch and lr from the run's config.yaml (the settings that change the curves)."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return run_dir.name
    kwargs = ",".join(f"{k}={v}" for k, v in (cfg.get("model_kwargs") or {}).items())
    model = f"{cfg.get('model', run_dir.name)}{':' if kwargs else ''}{kwargs}"
    return (f"{model} on {data_label(str(cfg.get('data', '?')))}, batch {cfg.get('batch_size', '?')}, "
            f"peak lr {cfg.get('lr', '?')}, {cfg.get('epochs', '?')} epoch(s)")


def run_figure(records: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Training loss per step and test accuracy per epoch; the accuracy axis spans at least
    :data:`~normfree.figures.ACCURACY_MIN_SPAN` points and the legend sits under the panels."""
    from matplotlib.ticker import MaxNLocator

    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig = new_figure(10, 4.2)
    ax0, ax1 = fig.subplots(1, 2)
    ax0.plot([r["step"] for r in steps], [r["loss"] for r in steps])
    ax0.set(xlabel="step", ylabel="train loss", title="training loss")
    shown = []
    for key, label in (("test_top1", "test top-1"), ("ema_test_top1", "EMA weights, test top-1")):
        pts = [(r["epoch"], r[key]) for r in epochs if key in r]
        if pts:
            ax1.plot(*zip(*pts), marker="o", label=label)
            shown += [v for _, v in pts]
    ax1.set(xlabel="epoch", ylabel="top-1 (%)", title="test accuracy", ylim=accuracy_limits(shown))
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend_below(fig, [ax1])
    if title:
        fig.suptitle(title)
    return fig


def plot_run(run_dir: Path) -> Path:
    """:func:`run_figure` of the run's ``metrics.jsonl`` → ``plot.png``."""
    fig = run_figure(read_metrics(run_dir / "metrics.jsonl"), _run_title(run_dir))
    return save(fig, run_dir / "plot.png", dpi=110)
