"""The folding plan of a residual block: which weight absorbs which scalar.

A block's scalars (the pre-activation's γ·β, each inner activation's γ, the output gain α·g) can each
be paid with an elementwise pass over an activation tensor, or moved into a small weight:
``conv(c·x) = conv_{c·W}(x)`` and ``c·conv(x) = conv_{c·W, c·b}(x)``. :func:`plan_block` decides, from
the block's structure alone, where each scalar goes. Two consumers read the same plan:

- the block's folded forward (:meth:`ResidualBlock.forward_folded`), which multiplies the weights on
  the fly, so training sees the same parameters and gradients as the textbook formula;
- deploy mode (:meth:`ResidualBlock.fold_scalars_`, called by :func:`normfree.deploy`), which
  multiplies the stored weights once and sets the scalars to 1.

Rules: an activation's factor is deferred only when every module that reads its output is a conv
that can absorb it (the first branch conv, and the shortcut conv behind optional average pools, which
commute with a scalar); α·g goes into the last branch module when that is a conv (weight and bias)
or a squeeze-excite (its gate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..layers import AvgPoolSame, GammaAct, SqueezeExcite

ShortcutPlan = Literal["identity", "conv", "pooled_conv", "module"]
"""How the block's shortcut is computed: none, a conv, average pools then a conv, anything else."""

Step = Literal["conv", "se", "act", "module"]
"""A branch module as the plan sees it; "act" is a GammaAct, or norm layers followed by a GammaAct."""

LINEAR_POOLS = (AvgPoolSame, nn.AvgPool2d, nn.Identity)
"""Modules that commute with multiplying their input by a scalar."""


@dataclass(frozen=True)
class FoldPlan:
    """Where each scalar of one residual block goes.

    Attributes:
        shortcut: the shortcut's kind (see :data:`ShortcutPlan`).
        preact_deferred: the pre-activation's factor goes into the first branch conv and the shortcut
            conv instead of an elementwise multiply.
        steps: each branch module's kind, in order.
        deferred: per branch module, True for an activation whose factor goes into the next conv.
        gain_into: ``"conv"`` or ``"se"`` when the last branch module absorbs α·g, else None (an
            elementwise multiply after the branch).
    """

    shortcut: ShortcutPlan
    preact_deferred: bool
    steps: tuple[Step, ...]
    deferred: tuple[bool, ...]
    gain_into: Literal["conv", "se"] | None


def activation_of(m: nn.Module) -> GammaAct | None:
    """The GammaAct that ends an activation layer (GammaAct, or norm → GammaAct), else None."""
    if isinstance(m, GammaAct):
        return m
    if isinstance(m, nn.Sequential) and len(m) > 1 and isinstance(m[-1], GammaAct):
        return m[-1]
    return None


def clear_factor(act: GammaAct) -> None:
    """Set an activation's γ and scale to 1 once a weight has absorbed them (deploy mode)."""
    act.gamma, act.scale = 1.0, 1.0


def shortcut_conv(sc: nn.Module | None) -> nn.Conv2d | None:
    """The conv that can absorb a factor on the shortcut's input (behind linear pools), else None."""
    if isinstance(sc, nn.Conv2d):
        return sc
    if isinstance(sc, nn.Sequential) and len(sc) and isinstance(sc[-1], nn.Conv2d) and all(
            isinstance(m, LINEAR_POOLS) for m in list(sc)[:-1]):
        return sc[-1]
    return None


def _step(m: nn.Module) -> Step:
    if isinstance(m, nn.Conv2d):
        return "conv"
    if isinstance(m, SqueezeExcite):
        return "se"
    return "act" if activation_of(m) is not None else "module"


def plan_block(preact: nn.Module, shortcut: nn.Module | None, branch: nn.Sequential) -> FoldPlan:
    """The plan for a block with these parts (see the module docstring for the rules)."""
    steps = tuple(_step(m) for m in branch)
    sc_kind: ShortcutPlan
    if shortcut is None:
        sc_kind = "identity"
    elif shortcut_conv(shortcut) is None:
        sc_kind = "module"
    else:
        sc_kind = "conv" if isinstance(shortcut, nn.Conv2d) else "pooled_conv"
    preact_deferred = (activation_of(preact) is not None and bool(steps) and steps[0] == "conv"
                       and sc_kind != "module")
    deferred = tuple(s == "act" and i + 1 < len(steps) and steps[i + 1] == "conv"
                     for i, s in enumerate(steps))
    last = steps[-1] if steps else None
    gain_into: Literal["conv", "se"] | None = last if last in ("conv", "se") else None  # type: ignore[assignment]
    return FoldPlan(sc_kind, preact_deferred, steps, deferred, gain_into)
