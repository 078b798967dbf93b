"""SPP figures against block index (x = 0 the stem output, x = i the output of block i, 1-based as the
official code; dotted vertical lines mark transition blocks):

- forward panels: average channel squared mean, variance (expected curve dashed), residual-branch
  variance (when a branch was measured); when gradients were measured, a second row with the backward
  pass: the gradient norm and variance at every block output;
- :func:`spp_figure` overlays models (one colour each, legend under the panels);
  :func:`spp_history_figure` overlays the SPPs of one training run, one line per measured step,
  coloured by step.

The title's second line states the settings that change the picture and that the title does not
already name: the inputs (N(0,1) or images) and the skip gains at init (0 makes every block output its
shortcut). A panel names the curves that are exactly 0 at every block, which a log axis cannot draw
and which hide each other on a linear one (e.g. Fixup's zero-initialized residual branches).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import ConfigError
from ..figures import legend_below, new_figure, save
from .spp import SPPResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORWARD = ("average channel squared mean", "average channel variance", "residual-branch variance")
BACKWARD = ("gradient norm at block output", "gradient variance at block output")


@dataclass
class _Line:
    x: list[int]
    y: list[float]
    color: object
    label: str
    dashed: bool = False


def _lines(r: SPPResult, color: object, label: str, expected: bool = True) -> list[list[_Line]]:
    """The curves of one result, per panel (forward three, then backward two)."""
    x = list(range(len(r.names) + 1))
    panels: list[list[_Line]] = [[_Line(x, [r.stem_sq_mean, *r.sq_mean], color, label)],
                                 [_Line(x, [r.stem_var, *r.var], color, label)], [], [], []]
    if expected and r.expected_var is not None:
        panels[1].append(_Line(x[1:], r.expected_var, color, f"{label} expected", dashed=True))
    res = [(i + 1, v) for i, v in enumerate(r.res_var) if v is not None]
    if res:
        panels[2].append(_Line([i for i, _ in res], [v for _, v in res], color, label))
    if r.grad_norm is not None and r.grad_var is not None:
        panels[3].append(_Line(x[1:], r.grad_norm, color, label))
        panels[4].append(_Line(x[1:], r.grad_var, color, label))
    return panels


def _panel(ax: Axes, title: str, lines: list[_Line], transition: Sequence[bool]) -> None:
    """Draw one panel: log y where the positive values span more than two decades, else from 0; the
    curves that are 0 at every block (invisible on a log axis, or hidden under each other) are
    named under it."""
    for line in lines:
        ax.plot(line.x, line.y, "--" if line.dashed else "-o", ms=3, color=line.color, label=line.label,
                alpha=0.7 if line.dashed else 1.0)
    positive = [y for line in lines for y in line.y if y is not None and math.isfinite(y) and y > 0]
    log = bool(positive) and max(positive) / min(positive) > 100
    xlabel = "block (0 = stem)"
    zero = [line.label for line in lines if not line.dashed and line.y and all(y == 0 for y in line.y)]
    if zero:  # invisible on a log axis, or lines on top of each other
        xlabel += "\n0 at every block" + (" (not drawable on a log axis)" if log else "") + ": " + ", ".join(zero)
    if log:
        ax.set_yscale("log")
    elif positive and ax.get_ylim()[0] > 0:
        ax.set_ylim(0, None)
    ax.set_title(title)
    ax.set_xlabel(xlabel, fontsize=8 if "\n" in xlabel else None)
    for i, t in enumerate(transition):
        if t:
            ax.axvline(i + 1, color="0.8", ls=":", lw=1, zorder=0)
    if title == FORWARD[2]:
        ax.axhline(1.0, color="0.5", lw=0.8)


def _draw(fig: Figure, per_result: list[list[list[_Line]]], transition: Sequence[bool]) -> list[Axes]:
    """Lay out the panels that have curves: squared mean and variance always, the residual-branch
    panel when a branch was measured, the backward panels when gradients were (a second row)."""
    panels = [(title, sum((p[k] for p in per_result), [])) for k, title in enumerate(FORWARD + BACKWARD)]
    panels = [(title, lines) for k, (title, lines) in enumerate(panels) if k < 2 or lines]
    cols = 3 if len(panels) in (3, 5) else 2
    axes = list(fig.subplots(-(-len(panels) // cols), cols, squeeze=False).ravel())
    for ax in axes[len(panels):]:
        ax.remove()  # 5 panels in a 2x3 grid: the sixth cell stays empty
    for ax, (title, lines) in zip(axes, panels):
        _panel(ax, title, lines, transition)
    return axes[:len(panels)]


def _gains(r: SPPResult) -> set[float]:
    return {g for g in r.skip_gains or [] if g is not None}


def _gain_text(gains: set[float]) -> str:
    text = "/".join(f"{g:g}" for g in sorted(gains))
    return text + (": every block outputs its shortcut" if gains == {0.0} else "")


def _labels_and_settings(results: Sequence[SPPResult], title: str | None,
                         when: str = "at init") -> tuple[list[str], str]:
    """Curve labels, and the settings line: what the title does not already say about the inputs and
    the skip gains at init. One gain shared by every model that has one goes in the settings line,
    different gains go into the labels."""
    said = (title or "").lower()
    parts = []
    if "input" not in said and "image" not in said and any(r.inputs for r in results):
        kinds = sorted({r.inputs or "given inputs" for r in results})
        shapes = sorted({"x".join(map(str, r.input_shape)) for r in results})
        parts.append(f"inputs: {', '.join(kinds)}, {' / '.join(shapes)}")
    gains = [_gains(r) for r in results]
    shared = {frozenset(g) for g in gains if g}
    labels = [r.model for r in results]
    if len(shared) == 1 and "skip gain" not in said:
        parts.append(f"skip gain {when} {_gain_text(set(next(iter(shared))))}")
    elif len(shared) > 1:
        labels = [f"{r.model} (skip gain {_gain_text(g)})" if g and "skipinit_gain=" not in r.model
                  else r.model for r, g in zip(results, gains)]
    return labels, "; ".join(parts)


def _suptitle(fig: Figure, title: str, settings: str) -> None:
    fig.suptitle(f"{title}\n{settings}" if settings else title, fontsize=11)


def spp_figure(results: SPPResult | Sequence[SPPResult], title: str | None = None) -> Figure:
    """The SPP figure of one or more models overlaid (see the module docstring)."""
    results = [results] if isinstance(results, SPPResult) else list(results)
    if not results:
        raise ConfigError("nothing to plot: no results")
    labels, settings = _labels_and_settings(results, title)
    grads = any(r.grad_norm is not None for r in results)
    rows = -(-len(labels) // 5)
    fig = new_figure(15, (7.6 if grads else 4.2) + 0.25 * rows)
    axes = _draw(fig, [_lines(r, f"C{k}", label) for k, (r, label) in enumerate(zip(results, labels))],
                 results[0].transition)
    legend_below(fig, axes)
    _suptitle(fig, title or "signal propagation", settings)
    return fig


def spp_history_figure(history: Sequence[SPPResult], title: str | None = None) -> Figure:
    """SPPs measured during one training run (``step`` set on each), one line per step coloured by step
    (a colour bar, not a legend); the expected curve is left out, it holds only at init."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    history = sorted(history, key=lambda r: r.step or 0)
    if not history:
        raise ConfigError("nothing to plot: no SPPs were recorded")
    steps = [r.step or 0 for r in history]
    norm, cmap = Normalize(min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1), colormaps["viridis"]
    labels, settings = _labels_and_settings(history[:1], title, "at init" if steps[0] == 0 else f"at step {steps[0]}")
    grads = any(r.grad_norm is not None for r in history)
    fig = new_figure(15, 7.6 if grads else 4.4)
    axes = _draw(fig, [_lines(r, cmap(norm(s)), f"step {s}", expected=False) for r, s in zip(history, steps)],
                 history[0].transition)
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes, label="training step", location="right", aspect=30)
    _suptitle(fig, title or f"{labels[0]}: signal propagation during training, {len(steps)} SPPs at steps "
                            f"{steps[0]}–{steps[-1]}", settings)
    return fig


def plot_spp(results: SPPResult | Sequence[SPPResult], path: str | Path, title: str | None = None,
             dpi: int = 100) -> Path:
    """Write :func:`spp_figure` to ``path`` (format from the suffix, e.g. .png) and return the path."""
    return save(spp_figure(results, title), path, dpi)


def plot_spp_history(history: Sequence[SPPResult], path: str | Path, title: str | None = None,
                     dpi: int = 100) -> Path:
    """Write :func:`spp_history_figure` to ``path`` and return the path."""
    return save(spp_history_figure(history, title), path, dpi)
