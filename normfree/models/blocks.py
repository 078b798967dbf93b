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

import contextlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import torch
from torch import nn

from ..layers import (AvgPoolSame, GammaAct, LayerFactory, SqueezeExcite, StochasticDepth,
                      block_drop_rates)
from ..errors import ModelSpecError
from ..layers.conv import conv_forward, plain_conv
from .fold import FoldPlan, ShortcutPlan, activation_of, clear_factor, plan_block, shortcut_conv

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

    ``plan`` (a :class:`~normfree.models.fold.FoldPlan`, computed at construction) says which weight
    absorbs which scalar; the folded path (:meth:`forward_folded`) and deploy mode
    (:meth:`fold_scalars_`) both follow it. On the folded path γ·β of the pre-activation and γ of inner
    activations go into the next conv's weight, α·g into the last conv's weight and bias (or the SE
    gate), the stochastic-depth mask into the residual add (``addcmul``), and inner activations run in
    place on fresh conv outputs.

    The rule: ``forward`` takes the folded path when ``fast_path`` is True (the default) and the plain
    path (:meth:`forward_unfolded`, every submodule called) otherwise. The folded path does not call
    the branch's submodules, so their hooks do not fire: code that hooks them switches the plain path
    on with :func:`unfolded` or :func:`set_fast_path` (normfree's signal-propagation and MAC counting
    do). Hooks on the block itself, on stages and on the network fire on both paths.
    """

    fast_path: bool = True
    branch_output: torch.Tensor | None = None  # last hooked training branch output, for per-example grads

    def __init__(self, in_ch: int, convs: Sequence[ConvSpec], layers: LayerFactory, *,
                 beta: float = 1.0, alpha: float = 0.2, se_hidden: int = 0, se_after: int = -1,
                 shortcut: ShortcutKind = "conv", drop_path_rate: float = 0.0,
                 drop_path_scale: bool = False, skipinit_gain: float | None = 0.0) -> None:
        super().__init__()
        if not convs:
            raise ModelSpecError("a residual branch needs at least one conv")
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
                branch["se"] = SqueezeExcite(ch, se_hidden, gain=layers.se_gain, **layers.factory_kwargs)
        self.branch = nn.Sequential(branch)
        self.drop_path = StochasticDepth(drop_path_rate, scale_by_keep=drop_path_scale)
        self.skipinit_gain = float(skipinit_gain) if nf and skipinit_gain is not None else None
        self.skip_gain = (nn.Parameter(torch.full((), self.skipinit_gain, **layers.factory_kwargs))
                          if self.skipinit_gain is not None else None)
        self.post = layers.post_layer()
        self.plan = plan_block(self.preact, self.shortcut, self.branch)

    @staticmethod
    def _make_shortcut(in_ch: int, out_ch: int, stride: int, layers: LayerFactory,
                       kind: ShortcutKind) -> nn.Module | None:
        if stride == 1 and in_ch == out_ch:
            return None
        if kind == "conv" or stride == 1:
            return layers.conv(in_ch, out_ch, 1, stride)
        if kind == "avgpool_conv":
            if stride != 2:
                raise ModelSpecError("the average-pool shortcut supports stride 2 only")
            return nn.Sequential(OrderedDict(pool=AvgPoolSame(2, 2), conv=layers.conv(in_ch, out_ch, 1)))
        raise ModelSpecError(f"unknown shortcut {kind!r}; choose 'conv' or 'avgpool_conv'")

    def reset_parameters(self) -> None:
        """The block's own parameter, the skip gain, back to ``skipinit_gain`` (its layers reset
        themselves)."""
        if self.skip_gain is not None and self.skipinit_gain is not None:
            nn.init.constant_(self.skip_gain, self.skipinit_gain)

    @property
    def is_transition(self) -> bool:
        """True when the shortcut sees the pre-activated input, which resets the signal's variance."""
        return self.shortcut is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_folded(x) if self.fast_path else self.forward_unfolded(x)

    def forward_unfolded(self, x: torch.Tensor) -> torch.Tensor:
        """The reference formulation: one elementwise pass per scalar, every submodule called."""
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
        """Same function as :meth:`forward_unfolded`, scalars moved into weights as :attr:`plan` says."""
        plan = self.plan
        owed: float | None = None  # a deferred activation factor the next conv absorbs
        if plan.preact_deferred:
            out, owed = _deferred_act(self.preact, x, inplace=False)
        else:
            out = self.preact(x)
        shortcut = x if self.shortcut is None else _run_shortcut(self.shortcut, plan.shortcut, out, owed)
        gain = self._output_gain()
        mods = list(self.branch)
        fresh = False  # True when `out` is a new tensor that nothing else reads or saved
        for i, (m, step) in enumerate(zip(mods, plan.steps)):
            tail = gain if plan.gain_into is not None and i == len(mods) - 1 else None
            if step == "conv":
                out, fresh = conv_forward(m, out, _times(owed, tail), tail), True
            elif step == "se":
                out, fresh = m(out, 1.0 if tail is None else tail), True
            elif plan.deferred[i]:
                out, owed = _deferred_act(m, out, inplace=fresh)
                fresh = False  # an activation saves its output for backward
                continue
            else:
                out, fresh = m(out), False
            owed = None
        if plan.gain_into is None and gain is not None:
            out = out * gain
        mask = self.drop_path.keep_mask(out)
        out = torch.addcmul(shortcut, out, mask) if mask is not None else _residual_add(out, shortcut, fresh)
        return out if self.post is None else self.post(out)

    def _output_gain(self) -> torch.Tensor | float | None:
        """α·g, or α alone, or None when the branch output is not scaled at all."""
        if self.skip_gain is not None:
            return self.skip_gain * self.alpha
        return self.alpha if self.alpha != 1.0 else None

    def replan(self) -> FoldPlan:
        """Recompute :attr:`plan` after changing the block's modules (deploy mode does)."""
        self.plan = plan_block(self.preact, self.shortcut, self.branch)
        return self.plan

    @torch.no_grad()
    def fold_scalars_(self) -> None:
        """Deploy mode, in place: eval-mode BatchNorms after branch convs go into those convs, then
        every scalar :attr:`plan` defers is multiplied into its weight once and set to 1. Only valid for
        inference (stochastic depth is switched off)."""
        self._fold_batchnorms()
        plan = self.replan()
        mods = list(self.branch)
        if plan.preact_deferred:
            act = activation_of(self.preact)
            mods[0].weight.mul_(act.factor)  # type: ignore[union-attr]
            sc = shortcut_conv(self.shortcut)
            if sc is not None:
                sc.weight.mul_(act.factor)  # type: ignore[union-attr]
            clear_factor(act)  # type: ignore[arg-type]
        for i, deferred in enumerate(plan.deferred):
            if deferred:
                act = activation_of(mods[i])
                mods[i + 1].weight.mul_(act.factor)  # type: ignore[union-attr]
                clear_factor(act)  # type: ignore[arg-type]
        if plan.gain_into is None:
            return
        gain = self.alpha * (1.0 if self.skip_gain is None else float(self.skip_gain))
        last = mods[-1]
        if plan.gain_into == "conv":
            last.weight.mul_(gain)
            if last.bias is not None:
                last.bias.mul_(gain)
        else:
            last.gain *= gain
        self.alpha, self.skip_gain = 1.0, None
        self.drop_path.rate = 0.0

    def _fold_batchnorms(self) -> None:
        """conv → (BatchNorm → activation) in the branch becomes conv' → activation."""
        mods = list(self.branch.named_children())
        for (prev_name, prev), (name, m) in zip(mods, mods[1:]):
            if (isinstance(prev, nn.Conv2d) and isinstance(m, nn.Sequential) and len(m) == 2
                    and isinstance(m[0], nn.BatchNorm2d) and isinstance(m[1], GammaAct)):
                setattr(self.branch, prev_name, fold_bn_into_conv(prev, m[0]))
                setattr(self.branch, name, m[1])

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:.6g}" if self.skip_gain is not None else ""


def set_fast_path(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every :class:`ResidualBlock` in ``model`` between the folded and the plain path."""
    for m in model.modules():
        if isinstance(m, ResidualBlock):
            m.fast_path = enabled
    return model


@contextlib.contextmanager
def unfolded(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model``'s blocks on the plain path inside the ``with`` (for hooks on block internals),
    restoring each block's previous setting on exit."""
    saved = [(m, m.fast_path) for m in model.modules() if isinstance(m, ResidualBlock)]
    set_fast_path(model, False)
    try:
        yield model
    finally:
        for m, enabled in saved:
            m.fast_path = enabled


def _residual_add(out: torch.Tensor, shortcut: torch.Tensor, fresh: bool) -> torch.Tensor:
    """``out + shortcut``, in place on ``out`` when nothing else reads it and no dtype promotion is
    due (a ``torch.fx`` leaf: the dtype test is Python control flow on a tensor)."""
    return out.add_(shortcut) if fresh and out.dtype == shortcut.dtype else out + shortcut


torch.fx.wrap("_residual_add")


def _times(a: torch.Tensor | float | None, b: torch.Tensor | float | None) -> torch.Tensor | float | None:
    """Product of optional scalars, staying a Python float (or None) when possible."""
    if a is None or (isinstance(a, float) and a == 1.0):
        return b
    if b is None:
        return a
    return a * b


def _deferred_act(m: nn.Module, x: torch.Tensor, inplace: bool) -> tuple[torch.Tensor, float]:
    """``(fn(x), factor)`` for an activation layer (GammaAct, or norm → GammaAct): the factor is left
    for the next conv. ``inplace``: x is read by nothing else (a norm layer's output always is)."""
    act = activation_of(m)
    assert act is not None  # the plan only defers activation layers
    y = x
    if act is not m:
        for sub in list(m)[:-1]:
            y = sub(y)
    return act.apply_fn(y, inplace=inplace or y is not x), act.factor


def _run_shortcut(sc: nn.Module, kind: ShortcutPlan, x: torch.Tensor, owed: float | None) -> torch.Tensor:
    """The projection shortcut on ``x · owed``, with ``owed`` folded into its conv (the plan defers
    nothing past a shortcut of another kind)."""
    if kind == "conv":
        return conv_forward(sc, x, owed)  # type: ignore[arg-type]
    if kind == "pooled_conv":
        for m in list(sc)[:-1]:  # type: ignore[call-overload]
            x = m(x)  # average pools commute with a scalar
        return conv_forward(sc[-1], x, owed)  # type: ignore[index]
    return sc(x)


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by eval-mode BN as one plain conv."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return plain_conv(conv, conv.weight * scale.view(-1, 1, 1, 1), (bias - bn.running_mean) * scale + bn.bias)


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
