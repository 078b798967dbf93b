"""NF-ResNets (Brock, De & Smith, ICLR 2021) and their BatchNorm twins, for ImageNet and 32×32 inputs.

Official structure (DeepMind ``nfnets/nf_resnet.py``): 7×7/2 stem conv with no activation, 3×3/2
max-pool, pre-activation bottleneck blocks 1×1 → 3×3 (stride) → 1×1 with bottleneck width out/4,
stage widths [64, 128, 256, 512]·width, strided 1×1 Scaled-WS shortcut on ``act(x)·β`` at transitions,
γ-scaled activation before the pool, classifier N(0, 0.01). ``norm="bn"`` builds the pre-activation
BN→ReLU ResNetV2 of identical topology (the official baseline), with plain He-initialized convs.

Small-input variants (``small_input=True``) use a 3×3 stem with 16 channels, no max-pool, and basic
blocks of two 3×3 convs, stage widths [16, 32, 64]·width: ResNet-20/56/110 and Wide ResNets.

The other baselines (ReLU→BN, revisited BN, GN+WS, EvoNorm-B0/S0, Fixup, SkipInit) are the same
builder with other layer options; their registered names and training helpers are in
:mod:`normfree.models.baselines` (see docs/baselines.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from ..errors import ModelSpecError
from ..layers import MaxPoolSame
from ..layers.norms import input_batch_norm
from .baselines import BASE_DEFAULTS, BASELINES, Baseline
from .blocks import ConvSpec
from .builder import NF_ONLY, OPTION_NAMES, Family, NetConfig, Blueprint, build_network
from .net import ResidualNetwork, named_seq
from .variants import CIFAR10_MEAN, CIFAR10_STD, Variant

IMAGENET_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3),
    200: (3, 24, 36, 3), 288: (24, 24, 24, 24), 600: (50, 50, 50, 50),
}
"""Blocks per stage of the ImageNet NF-ResNets (26 as timm; 50–600 as the official ``variant_dict``)."""


def _stem(r: Blueprint, kernel: int, stride: int, channels: int, pool: bool) -> tuple[nn.Module, int]:
    """[input BN] → conv [→ Fixup's bias → act] [→ 3×3/2 max-pool]."""
    layers, opts = r.layers, r.options
    first = {}
    if opts.input_norm:
        first["input_norm"] = input_batch_norm(opts.in_chans, layers.norm_kwargs.get("scale_init", 1.0),
                                               **layers.factory_kwargs)
    stem = named_seq(**first, conv=layers.conv(opts.in_chans, channels, kernel, stride))
    post = layers.post_layer()
    if post is not None:
        stem.add_module("act", post)
    if pool:
        stem.add_module("pool", MaxPoolSame(3, 2, layers.padding))
    return stem, channels


def _imagenet_stem(r: Blueprint) -> tuple[nn.Module, int]:
    """7×7/2 conv with 16·width channels, then a 3×3/2 max-pool."""
    return _stem(r, 7, 2, r.channels(16 * r.options.width), pool=True)


def _small_stem(r: Blueprint) -> tuple[nn.Module, int]:
    """3×3 conv with 16 channels, no pool (32×32 inputs)."""
    return _stem(r, 3, 1, 16, pool=False)


def _bottleneck(r: Blueprint, in_ch: int, s: int, b: int, stride: int) -> tuple[list[ConvSpec], int]:
    """1×1 → 3×3 (stride) → 1×1, bottleneck width ``expansion``·out; SE after the last conv."""
    out = r.widths[s]
    mid, groups = r.grouped(r.channels(out * r.options.expansion))
    return [ConvSpec(mid, 1), ConvSpec(mid, 3, stride, groups), ConvSpec(out, 1)], -1


def _basic(r: Blueprint, in_ch: int, s: int, b: int, stride: int) -> tuple[list[ConvSpec], int]:
    """Two 3×3 convs (the first strided); SE after the last."""
    out = r.widths[s]
    return [ConvSpec(out, 3, stride), ConvSpec(out, 3)], -1


def _no_final_conv(r: Blueprint) -> None:
    """The last stage feeds the final activation and the pool directly."""
    return None


_NO_FINAL_CONV = {"final_conv_mult": "this family has no final conv (the last stage feeds the pool)",
                  "use_two_convs": "only the NFNet block has a second grouped 3×3 (conv1b)"}
_RESNET_DEFAULTS = {"width": 4}

RESNET = Family("NF-ResNet", _imagenet_stem, _bottleneck, _no_final_conv, num_stages=4,
                defaults=_RESNET_DEFAULTS, rejects=_NO_FINAL_CONV)
"""ImageNet ResNets: 7×7/2 stem + max-pool, pre-activation bottlenecks, 224 px, centre crop 0.875."""

SMALL_RESNET = Family(
    "small-input ResNet", _small_stem, _basic, _no_final_conv, num_stages=3,
    data={"policy": "none", "interpolation": "bilinear", "mean": CIFAR10_MEAN, "std": CIFAR10_STD},
    defaults=_RESNET_DEFAULTS,
    rejects={**_NO_FINAL_CONV, **{k: "basic blocks have no bottleneck" for k in ("expansion", "group_width")}})
"""32×32 ResNets: 3×3 stem with 16 channels, no pool, basic blocks, images used as they are."""

IMAGENET_WIDTHS = (64, 128, 256, 512)
SMALL_WIDTHS = (16, 32, 64)


def _stage_depths(depth: int | Sequence[int], small_input: bool) -> tuple[int, ...]:
    if not isinstance(depth, int):
        return tuple(int(d) for d in depth)  # build_network checks the stage count
    if small_input:
        if depth < 8 or (depth - 2) % 6:
            raise ModelSpecError(f"small-input ResNet depth must be 6n+2 (20, 56, 110, ...), got {depth}")
        return ((depth - 2) // 6,) * 3
    if depth not in IMAGENET_DEPTHS:
        raise ModelSpecError(f"unknown ResNet depth {depth}; choose one of {sorted(IMAGENET_DEPTHS)} "
                             "or pass four stage depths")
    return IMAGENET_DEPTHS[depth]


def resnet_config(depth: int | Sequence[int] = 50, small_input: bool = False) -> NetConfig:
    """The :class:`NetConfig` of a ResNet: depth 26/50/101/152/200/288/600 (ImageNet), 6n+2 (small
    input) or explicit stage depths; stage widths [64, 128, 256, 512] or [16, 32, 64] before ``width``."""
    depths = _stage_depths(depth, small_input)
    if small_input:
        return NetConfig(SMALL_RESNET, Variant(SMALL_WIDTHS, depths, 32, 32, 0.0))
    return NetConfig(RESNET, Variant(IMAGENET_WIDTHS, depths, 224, 224, 0.0))


def resnet(depth: int | Sequence[int] = 50, *, small_input: bool = False, **options: Any) -> ResidualNetwork:
    """Build an NF-ResNet (``norm=None``) or its normalized twin: ``build_network(resnet_config(depth,
    small_input), **options)``.

    ``options`` are :class:`~normfree.models.builder.NetOptions`; ResNet defaults: width 4 ([256, 512,
    1024, 2048] as officially), ReLU, α = 0.2, stochastic depth 0.1, no SE (``use_se=True``: ratio
    0.25 of the block output), bottleneck ``expansion`` 0.25, strided 1×1 shortcut, classifier
    N(0, 0.01). ``norm`` (a key of :data:`~normfree.layers.NORMS`), ``norm_order``, ``norm_kwargs``,
    ``input_norm`` (revisited BN's BN on the raw images, scale 0.58 × ``norm_kwargs["scale_init"]``),
    ``fixup`` (post-activation blocks with scalar biases and Fixup's init; needs ``alpha=None``,
    ``skipinit_gain=1``, ``std_conv=False``) and ``weighted_sum`` (AutoInit's fixed scale after each
    sum) make the baselines of docs/baselines.md; a normalized net rejects ``alpha`` and
    ``skipinit_gain``.
    """
    return build_network(resnet_config(depth, small_input), **options)


RESNET_OPTIONS = ("depth", "small_input", *OPTION_NAMES)
"""What the registered ResNet names accept (before their fixed options and rejections)."""


@dataclass(frozen=True)
class ResNetSize:
    """One registered ResNet size (``nf_<key>``, ``bn_<key>``, ``<baseline>_<key>``)."""

    label: str
    depth: int | tuple[int, ...]
    small_input: bool = False
    width: float = 4

    @property
    def fixed(self) -> dict[str, Any]:
        """Builder options that define the size (a registered name cannot override them)."""
        return {"depth": self.depth, **({"small_input": True} if self.small_input else {})}

    @property
    def defaults(self) -> dict[str, Any]:
        """Overridable defaults: the width, and 10 classes for the 32×32 nets."""
        return {"width": self.width, "num_classes": 10} if self.small_input else {}

    @property
    def kind(self) -> str:
        return "cifar" if self.small_input else "resnet"


RESNET_SIZES: dict[str, ResNetSize] = {
    **{f"resnet{d}": ResNetSize(f"ResNet-{d}", d) for d in IMAGENET_DEPTHS},
    "cifar_resnet20": ResNetSize("ResNet-20", 20, True, 1),
    "cifar_resnet56": ResNetSize("ResNet-56", 56, True, 1),
    "cifar_resnet110": ResNetSize("ResNet-110", 110, True, 1),
    "wrn16_4": ResNetSize("WRN-16-4", (2, 2, 2), True, 4),
    "wrn28_10": ResNetSize("WRN-28-10", (4, 4, 4), True, 10),
}
"""Every registered ResNet size; each is registered as an NF net, its BN twin and every baseline."""

BN_TWIN = Baseline("pre-activation BN→ReLU", {"norm": "bn"}, BASE_DEFAULTS)
"""The official baseline (``bn_*``): the NF net's topology with BN→ReLU and plain He-initialized convs."""


def _register() -> None:
    from ..registry import register_model

    def add(prefix: str, key: str, size: ResNetSize, base: Baseline | None, description: str) -> None:
        fixed, defaults = size.fixed, size.defaults
        if base is not None:
            fixed, defaults = {**fixed, **base.fixed}, {**defaults, **base.defaults}
        rejects = {**(SMALL_RESNET if size.small_input else RESNET).rejects, **(NF_ONLY if "norm" in fixed else {})}
        register_model(f"{prefix}_{key}", resnet, fixed=fixed, defaults=defaults, family=f"{prefix}_{size.kind}",
                       options=RESNET_OPTIONS, unsupported=rejects, description=description)

    for key, size in RESNET_SIZES.items():  # the NF nets and their BN twins side by side
        if size.small_input:
            add("nf", key, size, None, f"NF {size.label} for 32x32 inputs")
            add("bn", key, size, BN_TWIN, f"BN {size.label} for 32x32 inputs, twin of nf_{key}")
        else:
            add("nf", key, size, None, f"NF-{size.label}, official DeepMind structure")
            add("bn", key, size, BN_TWIN, f"pre-activation BN-{size.label}, twin of nf_{key}")
    for prefix, base in BASELINES.items():
        for key, size in RESNET_SIZES.items():
            add(prefix, key, size, base, f"{base.label} {size.label}, twin of nf_{key}")


_register()
