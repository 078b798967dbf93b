"""The three-panel signal-propagation plot: squared mean, variance (expected curve dashed) and
residual-branch variance against block index, several models overlaid."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .spp import SPPResult


def plot_spp(results: SPPResult | Sequence[SPPResult], path: str | Path, title: str | None = None,
             dpi: int = 100) -> Path:
    """Write the SPP figure to ``path`` (format from the suffix, e.g. .png) and return the path.

    x = 0 is the stem output, x = i the output of block i (1-based, as the official code); dotted
    vertical lines mark transition blocks of the first model. A log y-axis is used where a panel spans
    more than two decades.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [results] if isinstance(results, SPPResult) else list(results)
    if not results:
        raise ConfigError("nothing to plot: no results")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = ("average channel squared mean", "average channel variance", "residual-branch variance")
    for k, r in enumerate(results):
        color = f"C{k}"
        x = list(range(len(r.names) + 1))
        axes[0].plot(x, [r.stem_sq_mean, *r.sq_mean], "-o", ms=3, color=color, label=r.model)
        axes[1].plot(x, [r.stem_var, *r.var], "-o", ms=3, color=color, label=r.model)
        if r.expected_var is not None:
            axes[1].plot(x[1:], r.expected_var, "--", color=color, alpha=0.7, label=f"{r.model} expected")
        res = [(i + 1, v) for i, v in enumerate(r.res_var) if v is not None]
        if res:
            axes[2].plot(*zip(*res), "-o", ms=3, color=color, label=r.model)
    for ax, label in zip(axes, panels):
        ax.set_title(label)
        ax.set_xlabel("block (0 = stem)")
        for i, t in enumerate(results[0].transition):
            if t:
                ax.axvline(i + 1, color="0.8", ls=":", lw=1, zorder=0)
        lo, hi = ax.get_ylim()
        positive = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
        if positive and max(positive) / min(positive) > 100:
            ax.set_yscale("log")
        elif lo > 0:
            ax.set_ylim(0, hi)
    axes[2].axhline(1.0, color="0.5", lw=0.8)
    if title:
        fig.suptitle(title)
    handles, labels = axes[1].get_legend_handles_labels()
    if len(results) <= 3:
        axes[1].legend(fontsize=8)
        fig.tight_layout()
    else:  # many models: a legend below the panels instead of over the curves
        ncol = min(5, len(labels))
        rows = -(-len(labels) // ncol)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.045 * rows + 0.01, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
