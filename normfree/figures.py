"""What every normfree figure shares: built on a bare matplotlib ``Figure`` (no pyplot, so no global
state and no backend switch in the caller's process), legends outside the panels, and accuracy axes
that a fraction of a point cannot fill.

The builders return the ``Figure`` (tests and notebooks inspect it); :func:`save` writes it. matplotlib
is imported when a figure is made, not with normfree (it costs seconds on a slow disk).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ACCURACY_MIN_SPAN = 5.0
"""Percentage points an accuracy axis spans at least, so a 0.3-point wiggle stays a wiggle."""


def new_figure(width: float, height: float) -> Figure:
    """A figure with constrained layout, which keeps legends placed ``outside`` clear of the panels."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def legend_below(fig: Figure, axes: Iterable[Axes], max_cols: int = 5) -> None:
    """One legend for all panels, under them (never over the curves); labels de-duplicated in order."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center",
                   ncol=min(max_cols, len(seen)), fontsize=8, frameon=False)


def accuracy_limits(values: Sequence[float], min_span: float = ACCURACY_MIN_SPAN) -> tuple[float, float]:
    """y-limits (in %) for accuracies: the data with a margin, at least ``min_span`` points tall, inside
    [0, 100]; empty or non-finite data give (0, 100)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 100.0
    lo, hi = min(finite), max(finite)
    pad = max((hi - lo) * 0.08, (min_span - (hi - lo)) / 2, 0.0)
    lo, hi = lo - pad, hi + pad
    if lo < 0:
        lo, hi = 0.0, min(100.0, hi - lo)
    if hi > 100:
        lo, hi = max(0.0, lo - (hi - 100)), 100.0
    return lo, hi


def data_label(spec: str) -> str:
    """A data spec for a title, paths cut to their last part (``npz:/data/cifar10`` → ``npz:cifar10``):
    figures are shared, machine paths are not."""
    kind, _, where = spec.rpartition(":")
    return f"{kind}{':' if kind else ''}{Path(where).name if '/' in where else where}"


def save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` (format from the suffix) and return the path."""
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path
