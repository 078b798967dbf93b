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

from ..layers import AvgPoolSame, LayerFactory, SqueezeExcite, StochasticDepth, block_drop_rates

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
    """

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
        out = self.preact(x)
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.drop_path(self.branch(out))
        if self.skip_gain is not None:
            out = out * self.skip_gain
        if self.alpha != 1.0:
            out = out * self.alpha
        out = out + shortcut
        return out if self.post is None else self.post(out)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:.6g}" if self.skip_gain is not None else ""


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
