"""One builder for every family: a :class:`NetConfig` (family + variant row) and options → a network.

A family is data plus three small functions (:class:`Family`): how its stem looks, which convs one
block has, and how wide its final conv is. Everything else — the layer recipe, channel rounding, the
α/β bookkeeping, squeeze-excite, stochastic depth, the head and ``pretrained_cfg`` — is done here
once, so every family takes the same options (:class:`NetOptions`) with the same meaning, and an
option that makes no sense for a family is rejected with the reason instead of being ignored.
Adding a family is a variant table, a :class:`Family` row and its stem/block functions.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn

from ..errors import ModelOptionError, ModelSpecError
from ..layers import LayerFactory
from ..layers.conv import Padding
from ..layers.factory import NormOrder
from .baselines import fixup_init
from .blocks import ConvSpec, ResidualBlock, ShortcutKind, build_stages
from .net import ResidualNetwork, named_seq
from .variants import Variant, pretrained_cfg


@dataclass(frozen=True)
class NetOptions:
    """The constructor options every family shares (``create_model(name, **options)``).

    The defaults here are the NF-ResNet's; a :class:`Family` overrides those it sets differently
    (``Family.defaults``) and names those it rejects (``Family.rejects``).

    Args:
        num_classes: classifier outputs (0: no classifier, the pooled features).
        width: multiplier on the variant's stage widths (and on the ResNet stem).
        widths / depths: replace the variant's stage widths (before ``width``) and blocks per stage.
        drop_rate: dropout before the classifier; None takes the variant's value.
        activation: a name of :func:`~normfree.layers.activation_names`.
        alpha: variance each block adds; None: no α/β, a plain residual sum (SkipInit, Fixup).
        skipinit_gain: initial value of each block's scalar branch gain (0 officially); None: no gain.
        stochdepth_rate / stochdepth_scale: the last block's drop rate (official rate·i/N schedule);
            whether kept samples are rescaled by 1/keep (timm) or not (official).
        use_se / se_ratio: squeeze-excite in every block, hidden width = ratio × the channels it gates.
        expansion: bottleneck width as a fraction of the block's output (ResNet, NFNet) or input
            (NF-RegNet) channels.
        group_width: channels per group of the 3×3 convs (None: ungrouped).
        channel_divisor: None truncates channels as the official code; 8 rounds them like timm's
            ``make_divisible`` (stages, bottleneck, SE hidden width and final conv).
        final_conv_mult / use_two_convs: NFNet only: final conv width over the last stage's, and the
            second grouped 3×3 (``conv1b``) of its block.
        std_conv / ws / gamma_in_act / padding / shortcut: the conv recipe
            (:class:`~normfree.layers.LayerFactory`) and the projection shortcut.
        fc_init_std: classifier weight std (0: zeros).
        in_chans: input channels.
        norm / norm_order / norm_kwargs / input_norm / fixup / weighted_sum: the normalized and
            initialization baselines of the ResNets (docs/baselines.md).
        device / dtype: where and in which dtype the parameters are created (``"meta"`` works).
    """

    num_classes: int = 1000
    width: float = 1.0
    widths: Sequence[int] | None = None
    depths: Sequence[int] | None = None
    drop_rate: float | None = None
    activation: str = "relu"
    alpha: float | None = 0.2
    skipinit_gain: float | None = 0.0
    stochdepth_rate: float = 0.1
    stochdepth_scale: bool = False
    use_se: bool = False
    se_ratio: float = 0.25
    expansion: float = 0.25
    group_width: int | None = None
    channel_divisor: int | None = None
    final_conv_mult: float = 2.0
    use_two_convs: bool = True
    std_conv: bool = True
    ws: Literal["official", "timm", "plain"] = "official"
    gamma_in_act: bool = False
    padding: Padding = "same"
    shortcut: ShortcutKind = "conv"
    fc_init_std: float = 0.01
    in_chans: int = 3
    norm: str | None = None
    norm_order: NormOrder = "norm_act"
    norm_kwargs: dict[str, Any] | None = None
    input_norm: bool = False
    fixup: bool = False
    weighted_sum: bool = False
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    def layer_factory(self) -> LayerFactory:
        """The conv/activation/norm recipe these options describe."""
        return LayerFactory(act=self.activation, norm=self.norm, std_conv=self.std_conv, ws=self.ws,
                            padding=self.padding, norm_order=self.norm_order,
                            norm_kwargs=dict(self.norm_kwargs or {}), fixup=self.fixup,
                            gamma_in_act=self.gamma_in_act, weighted_sum=self.weighted_sum,
                            device=self.device, dtype=self.dtype)


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NetOptions))

NF_ONLY: dict[str, str] = {
    "alpha": "a normalized network has no α (its blocks add the branch with weight 1)",
    "skipinit_gain": "a normalized network has no skip gain"}
"""Options a normalized network (``norm`` set) rejects."""

BASELINE_ONLY: dict[str, str] = {
    opt: "the normalized and initialization baselines are defined on the ResNets (docs/baselines.md)"
    for opt in ("norm", "norm_order", "norm_kwargs", "input_norm", "fixup", "weighted_sum")}
"""Options the NF-RegNets and NFNets reject."""


@dataclass(frozen=True)
class Blueprint:
    """What a family's stem/block/final functions see: the resolved variant row and options, the
    layer factory, and the stage widths after the multiplier and rounding."""

    variant: Variant
    options: NetOptions
    layers: LayerFactory
    widths: tuple[int, ...]

    def channels(self, value: float, round_limit: float = 0.9) -> int:
        """A channel count: ``int(value)`` (at least 1), or ``make_divisible`` with ``channel_divisor``."""
        div = self.options.channel_divisor
        return max(1, int(value)) if div is None else make_divisible(value, div, round_limit)

    def grouped(self, channels: int) -> tuple[int, int]:
        """(width, groups) of a 3×3 conv with ``channels``, under the option ``group_width``."""
        gw = self.options.group_width
        return (channels, 1) if gw is None else grouped_width(channels, gw)


StemFn = Callable[[Blueprint], tuple[nn.Module, int]]
"""Blueprint → (stem module, its output channels)."""
BlockConvsFn = Callable[[Blueprint, int, int, int, int], tuple[list[ConvSpec], int]]
"""(blueprint, in_ch, stage, index in stage, stride) → (the branch's convs, index of the conv SE follows)."""
FinalWidthFn = Callable[[Blueprint], "int | None"]
"""Blueprint → channels of the final 1×1 conv before the pool (None: no final conv, only the activation)."""


@dataclass(frozen=True)
class Family:
    """One architecture family: its stem, block and final conv, and how its options differ.

    ``first_stride`` is the stride of the first stage (the others have 2); ``num_stages`` the stage
    count the family is defined with (None: any); ``data`` the :func:`pretrained_cfg` keywords (eval
    policy, interpolation, mean/std); ``defaults`` the :class:`NetOptions` it sets differently;
    ``rejects`` the options that make no sense for it, with the reason its error states.
    """

    label: str
    stem: StemFn
    block: BlockConvsFn
    final_width: FinalWidthFn
    first_stride: int = 1
    num_stages: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    rejects: Mapping[str, str] = field(default_factory=dict)

    def resolve(self, options: Mapping[str, Any]) -> NetOptions:
        """The family's defaults updated with ``options``; an unknown, rejected or ignored option raises
        :class:`~normfree.errors.ModelOptionError` naming it."""
        unknown = [k for k in options if k not in OPTION_NAMES]
        if unknown:
            hints = {k: difflib.get_close_matches(k, OPTION_NAMES, n=1) for k in unknown}
            raise ModelOptionError(f"{self.label}: unexpected option(s) " + ", ".join(
                f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items()))
        opts = NetOptions(**{**self.defaults, **options})
        rejected = {k: self.rejects[k] for k in options if k in self.rejects}
        if opts.norm is not None:
            rejected.update({k: NF_ONLY[k] for k in options if k in NF_ONLY})
        if "se_ratio" in options and not opts.use_se:
            rejected["se_ratio"] = "no squeeze-excite without use_se=True"
        if options.get("ws", "official") != "official" and not opts.std_conv:
            rejected["ws"] = "plain convs (std_conv=False) have no weight standardization"
        if rejected:
            raise ModelOptionError(f"{self.label}: unsupported option(s) "
                                   + "; ".join(f"{k}: {why}" for k, why in rejected.items()))
        return opts


@dataclass(frozen=True)
class NetConfig:
    """A network as data: its family and its variant row (widths before the multiplier, depths,
    resolutions, dropout)."""

    family: Family
    variant: Variant


def build_network(config: NetConfig, **options: Any) -> ResidualNetwork:
    """Build ``config`` with :class:`NetOptions` ``options``: stem, stages of
    :class:`~normfree.models.blocks.ResidualBlock`, final layers, classifier and ``pretrained_cfg``."""
    family = config.family
    opts = family.resolve(options)
    bp = _blueprint(config, opts)
    if opts.fixup and (opts.alpha is not None or opts.skipinit_gain == 0):
        raise ModelSpecError("Fixup has no α/β and its branch multiplier starts at 1: "
                             "pass alpha=None and skipinit_gain=1")
    stem, stem_ch = family.stem(bp)
    stages, expected = build_stages(stem_ch, bp.variant.depths, _block_fn(family, bp),
                                    opts.alpha or 0.0, opts.stochdepth_rate)
    final, num_features = _final(family, bp)
    v = bp.variant
    data = pretrained_cfg(opts.num_classes, v.train_size, v.test_size, **family.data)
    nf_expected = expected if bp.layers.normalizer_free and opts.alpha is not None else None
    return ResidualNetwork(stem, stages, final, num_features, opts.num_classes, v.drop_rate,
                           opts.fc_init_std, nf_expected, data,
                           extra_init=fixup_init if opts.fixup else None, **bp.layers.factory_kwargs)


def _blueprint(config: NetConfig, opts: NetOptions) -> Blueprint:
    """Apply the ``widths``/``depths``/``drop_rate`` overrides and the width multiplier."""
    row, family = config.variant, config.family
    v = Variant(tuple(int(w) for w in opts.widths or row.widths), tuple(int(d) for d in opts.depths or row.depths),
                row.train_size, row.test_size, row.drop_rate if opts.drop_rate is None else opts.drop_rate)
    if len(v.widths) != len(v.depths) or min(v.depths) < 1:
        raise ModelSpecError(f"{family.label}: widths {v.widths} and depths {v.depths} must have the same "
                             "length, with at least one block per stage")
    if family.num_stages is not None and len(v.depths) != family.num_stages:
        raise ModelSpecError(f"{family.label} has {family.num_stages} stages; got widths {v.widths} and "
                             f"depths {v.depths}")
    if not isinstance(opts.width, (int, float)) or isinstance(opts.width, bool) or opts.width <= 0:
        raise ModelSpecError(f"width must be a positive number, got {opts.width!r}")
    partial = Blueprint(v, opts, opts.layer_factory(), ())
    return dataclasses.replace(partial, widths=tuple(partial.channels(w * opts.width) for w in v.widths))


def _block_fn(family: Family, r: Blueprint) -> Callable[[int, int, int, float, float], ResidualBlock]:
    opts = r.options

    def block(in_ch: int, s: int, b: int, beta: float, rate: float) -> ResidualBlock:
        stride = (family.first_stride if s == 0 else 2) if b == 0 else 1
        convs, se_after = family.block(r, in_ch, s, b, stride)
        se_hidden = max(1, r.channels(convs[se_after].out * opts.se_ratio, 0.0)) if opts.use_se else 0
        return ResidualBlock(in_ch, convs, r.layers, beta=beta, alpha=1.0 if opts.alpha is None else opts.alpha,
                             se_hidden=se_hidden, se_after=se_after, shortcut=opts.shortcut,
                             drop_path_rate=rate, drop_path_scale=opts.stochdepth_scale,
                             skipinit_gain=opts.skipinit_gain)

    return block


def _final(family: Family, r: Blueprint) -> tuple[nn.Module, int]:
    """The layers between the last stage and the pool, and their output channels."""
    last = r.widths[-1]
    width = family.final_width(r)
    if width is None:
        return r.layers.final_layer(last), last
    return named_seq(conv=r.layers.conv(last, width, 1), act=r.layers.act_layer(width)), width


def make_divisible(value: float, divisor: int, round_limit: float = 0.9) -> int:
    """timm's channel rounding: nearest multiple of ``divisor``, bumped up if it loses >10 %."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < round_limit * value else new


def grouped_width(channels: float, group_width: int) -> tuple[int, int]:
    """(width, groups): ``int(channels)`` rounded down to a multiple of the group width, as officially."""
    groups = int(channels) // group_width
    if groups < 1:
        raise ModelSpecError(f"a grouped conv needs at least {group_width} channels (group width "
                             f"{group_width}), got {int(channels)}; use a larger width or smaller group width")
    return group_width * groups, groups
