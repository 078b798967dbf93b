"""The one residual block every family uses, and the α/β bookkeeping that strings blocks together.

A normalizer-free block computes ``h + α · g · f(act(h) · β)``: β = 1/(expected std of h) makes the
branch input unit-variance, α sets how much variance each block adds, and g is a scalar gain
initialized to zero (SkipInit). A transition block (one whose shortcut needs a projection) feeds the
shortcut the pre-activated ``act(h) · β`` too, which resets the expected variance to 1.
With a normalized :class:`~normfree.layers.LayerFactory` the same block is the pre-activation ResNet
block (``act(bn(h))`` instead of ``act(h) · β``, α = 1, no gain). A Fixup factory adds ``post``, an
activation after the sum, which makes the same block post-activation (see ``LayerFactory.fixup``).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from ..layers import (AvgPoolSame, GammaAct, LayerFactory, SqueezeExcite, StochasticDepth,
                      block_drop_rates)
from ..layers.conv import conv_forward

ShortcutKind = Literal["conv", "avgpool_conv"]


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of a residual branch (an activation precedes every conv but the first)."""

    out: int
    kernel: int
    stride: int = 1
    groups: int = 1
    name: str = ""


class ResidualBlock(nn.Module):
    """Pre-activation residual block: ``h + α · g · drop(branch(preact(h)))``.

    Attributes used by tools (analysis, conversion, fusion): ``preact``, ``shortcut`` (None means the
    identity on the raw input), ``branch`` (an ``nn.Sequential`` whose output is the residual-branch
    signal before stochastic depth, gain and α), ``skip_gain`` (scalar parameter or None), ``alpha``,
    ``beta``, ``post`` (applied after the residual sum; None except for Fixup).

    ``fast_path`` (default True; see :func:`set_fast_path`) computes the same function with every
    scalar folded into a weight: γ·β of the pre-activation and γ of inner activations go into the next
    conv's weight, α·g into the last conv's weight and bias (or the SE gate), the stochastic-depth mask
    into the residual add (``addcmul``), and inner activations run in place on fresh conv outputs. The
    plain path (:meth:`forward_unfolded`) is used instead whenever a submodule carries hooks, so
    tools that hook ``preact``/``branch`` members still see every call.
    """

    fast_path: bool = True
    branch_output: torch.Tensor | None = None  # last hooked training branch output, for per-example grads

    def __init__(self, in_ch: int, convs: Sequence[ConvSpec], layers: LayerFactory, *,
                 beta: float = 1.0, alpha: float = 0.2, se_hidden: int = 0, se_after: int = -1,
                 shortcut: ShortcutKind = "conv", drop_path_rate: float = 0.0,
                 drop_path_scale: bool = False, skipinit_gain: float | None = 0.0) -> None:
        super().__init__()
        if not convs:
            raise ValueError("a residual branch needs at least one conv")
        out_ch = convs[-1].out
        stride = math.prod(c.stride for c in convs)
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        nf = layers.normalizer_free
        self.alpha = float(alpha) if nf else 1.0
        self.beta = float(beta) if nf else 1.0
        self.preact = layers.preact_layer(in_ch, scale=self.beta)
        self.shortcut = self._make_shortcut(in_ch, out_ch, stride, layers, shortcut)

        branch: OrderedDict[str, nn.Module] = OrderedDict()
        ch = in_ch
        se_index = se_after % len(convs)
        for i, spec in enumerate(convs):
            if i > 0:
                branch[f"act{i}"] = layers.act_layer(ch)
            branch[spec.name or f"conv{i}"] = layers.conv(ch, spec.out, spec.kernel, spec.stride,
                                                          spec.groups)
            ch = spec.out
            if se_hidden > 0 and i == se_index:
                branch["se"] = SqueezeExcite(ch, se_hidden, gain=layers.se_gain)
        self.branch = nn.Sequential(branch)
        self.drop_path = StochasticDepth(drop_path_rate, scale_by_keep=drop_path_scale)
        self.skip_gain = (nn.Parameter(torch.full((), float(skipinit_gain)))
                          if nf and skipinit_gain is not None else None)
        self.post = layers.post_layer()

    @staticmethod
    def _make_shortcut(in_ch: int, out_ch: int, stride: int, layers: LayerFactory,
                       kind: ShortcutKind) -> nn.Module | None:
        if stride == 1 and in_ch == out_ch:
            return None
        if kind == "conv" or stride == 1:
            return layers.conv(in_ch, out_ch, 1, stride)
        if kind == "avgpool_conv":
            if stride != 2:
                raise ValueError("the average-pool shortcut supports stride 2 only")
            return nn.Sequential(OrderedDict(pool=AvgPoolSame(2, 2), conv=layers.conv(in_ch, out_ch, 1)))
        raise ValueError(f"unknown shortcut {kind!r}; choose 'conv' or 'avgpool_conv'")

    @property
    def is_transition(self) -> bool:
        """True when the shortcut sees the pre-activated input, which resets the signal's variance."""
        return self.shortcut is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_path and not self._hooked():
            return self.forward_folded(x)
        return self.forward_unfolded(x)

    def forward_unfolded(self, x: torch.Tensor) -> torch.Tensor:
        """The reference formulation: one elementwise pass per scalar."""
        out = self.preact(x)
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.drop_path(self.branch(out))
        if self.skip_gain is not None:
            if self._forward_hooks and self.skip_gain.requires_grad and torch.is_grad_enabled():
                self.branch_output = out.detach()  # a per-example gradient hook (normfree.privacy) reads it
            out = out * self.skip_gain
        if self.alpha != 1.0:
            out = out * self.alpha
        out = out + shortcut
        return out if self.post is None else self.post(out)

    def forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        """Same function as :meth:`forward_unfolded`, scalars folded into weights (see class doc)."""
        owed: float | None  # the factor the next linear layer must absorb; None once α·g is absorbed
        out, owed = _activate(self.preact, x, fresh=False) or (self.preact(x), 1.0)
        shortcut = x if self.shortcut is None else _shortcut_folded(self.shortcut, out, owed)
        gain: torch.Tensor | float | None = self.alpha if self.alpha != 1.0 else None
        if self.skip_gain is not None:
            gain = self.skip_gain * self.alpha
        mods = list(self.branch)
        fresh = False  # True when `out` is a new tensor that nothing else reads or saved
        for i, m in enumerate(mods):
            tail = gain if i == len(mods) - 1 else None  # the last module may absorb α·g
            if isinstance(m, nn.Conv2d):
                out = conv_forward(m, out, _times(owed, tail), tail)
            elif isinstance(m, SqueezeExcite):
                out = m(_owe(out, owed), 1.0 if tail is None else tail)
            else:
                out = _owe(out, owed)
                out, owed = _activate(m, out, fresh) or (m(out), 1.0)
                fresh = False  # an activation saves its output for backward
                continue
            owed, fresh = (1.0 if tail is None else None), True  # None: α·g absorbed
        if owed is not None:
            out = _owe(out, _times(owed, gain))
        mask = self.drop_path.keep_mask(out)
        if mask is not None:
            out = torch.addcmul(shortcut, out, mask)
        else:
            out = out.add_(shortcut) if fresh and out.dtype == shortcut.dtype else out + shortcut
        return out if self.post is None else self.post(out)

    def _hooked(self) -> bool:
        """True when a submodule has hooks, which the folded path would silently bypass."""
        if _global_hooks():
            return True
        return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   or m._backward_pre_hooks for m in self.modules() if m is not self)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:.6g}" if self.skip_gain is not None else ""


def set_fast_path(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every :class:`ResidualBlock` in ``model`` between the folded and the plain path."""
    for m in model.modules():
        if isinstance(m, ResidualBlock):
            m.fast_path = enabled
    return model


def _global_hooks() -> bool:
    g = nn.modules.module
    return bool(g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks)


def _times(a: torch.Tensor | float | None, b: torch.Tensor | float | None) -> torch.Tensor | float | None:
    """Product of optional scalars, staying a Python float (or None) when possible."""
    if a is None or (isinstance(a, float) and a == 1.0):
        return b
    if b is None:
        return a
    return a * b


def _owe(x: torch.Tensor, factor: torch.Tensor | float | None) -> torch.Tensor:
    """Pay an owed factor with an elementwise pass, only when there is something to pay."""
    if factor is None or (isinstance(factor, float) and factor == 1.0):
        return x
    return x * factor


def _activate(m: nn.Module, x: torch.Tensor, fresh: bool) -> tuple[torch.Tensor, float] | None:
    """``(fn(x), factor)`` for an activation layer (GammaAct, or norm → GammaAct), else None.

    The factor is left for the next linear layer to absorb. ``fresh``: x is read by nothing else, so
    the function may run in place (a norm layer's output always is).
    """
    if isinstance(m, GammaAct):
        return m.apply_fn(x, inplace=fresh), m.factor
    if isinstance(m, nn.Sequential) and len(m) > 1 and isinstance(m[-1], GammaAct):
        y = x
        for sub in list(m)[:-1]:
            y = sub(y)
        return m[-1].apply_fn(y, inplace=fresh or y is not x), m[-1].factor
    return None


_LINEAR_POOLS = (AvgPoolSame, nn.AvgPool2d, nn.Identity)


def _shortcut_folded(sc: nn.Module, x: torch.Tensor, owed: float) -> torch.Tensor:
    """The projection shortcut on ``x · owed``, with ``owed`` folded into its conv."""
    if isinstance(sc, nn.Conv2d):
        return conv_forward(sc, x, owed)
    if isinstance(sc, nn.Sequential) and isinstance(sc[-1], nn.Conv2d) and all(
            isinstance(m, _LINEAR_POOLS) for m in list(sc)[:-1]):
        for m in list(sc)[:-1]:
            x = m(x)  # average pools commute with a scalar
        return conv_forward(sc[-1], x, owed)
    return sc(_owe(x, owed))


BlockFn = Callable[[int, int, int, float, float], ResidualBlock]
"""``(in_ch, stage_index, block_index_in_stage, beta, drop_path_rate) -> block``."""


def build_stages(in_ch: int, depths: Sequence[int], block_fn: BlockFn, alpha: float = 0.2,
                 stochdepth_rate: float = 0.0) -> tuple[nn.Sequential, list[float]]:
    """Chain blocks stage by stage, tracking the expected signal std to give each block its β.

    Official bookkeeping: β = 1/expected_std; after a transition block the expected variance restarts
    at 1; every block then adds α². Stochastic-depth rates follow rate·i/N over the global block index.
    Returns the stages and the expected variance after each block (what an SPP should measure with
    unit skip gains).
    """
    rates = block_drop_rates(stochdepth_rate, sum(depths))
    expected_var, expected = 1.0, []
    stages, idx = [], 0
    for s, depth in enumerate(depths):
        blocks = []
        for b in range(depth):
            block = block_fn(in_ch, s, b, 1.0 / math.sqrt(expected_var), rates[idx])
            if block.is_transition:
                expected_var = 1.0
            expected_var += alpha**2
            expected.append(expected_var)
            blocks.append(block)
            in_ch = block.out_ch
            idx += 1
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), expected
