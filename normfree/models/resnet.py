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
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ..errors import ModelSpecError
from ..layers import LayerFactory, MaxPoolSame
from ..layers.conv import Padding
from ..layers.factory import NormOrder
from ..layers.norms import input_batch_norm
from .baselines import BASE_DEFAULTS, BASELINES, Baseline, fixup_init
from .blocks import ConvSpec, ResidualBlock, ShortcutKind, build_stages
from .net import ResidualNetwork, named_seq
from .variants import CIFAR10_MEAN, CIFAR10_STD, pretrained_cfg

IMAGENET_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3),
    200: (3, 24, 36, 3), 288: (24, 24, 24, 24), 600: (50, 50, 50, 50),
}
"""Blocks per stage of the ImageNet NF-ResNets (26 as timm; 50–600 as the official ``variant_dict``)."""


def _stage_depths(depth: int | Sequence[int], small_input: bool) -> tuple[int, ...]:
    if not isinstance(depth, int):
        depths = tuple(int(d) for d in depth)
        if len(depths) != (3 if small_input else 4) or min(depths) < 1:
            raise ModelSpecError(f"expected {3 if small_input else 4} positive stage depths, got {depth}")
        return depths
    if small_input:
        if depth < 8 or (depth - 2) % 6:
            raise ModelSpecError(f"small-input ResNet depth must be 6n+2 (20, 56, 110, ...), got {depth}")
        return ((depth - 2) // 6,) * 3
    if depth not in IMAGENET_DEPTHS:
        raise ModelSpecError(f"unknown ResNet depth {depth}; choose one of {sorted(IMAGENET_DEPTHS)} "
                         "or pass four stage depths")
    return IMAGENET_DEPTHS[depth]


def resnet(depth: int | Sequence[int] = 50, *, small_input: bool = False, width: float = 4,
           norm: str | None = None, num_classes: int = 1000, activation: str = "relu",
           alpha: float | None = 0.2, stochdepth_rate: float = 0.1, drop_rate: float = 0.0,
           skipinit_gain: float = 0.0, use_se: bool = False, se_ratio: float = 0.25,
           std_conv: bool = True, ws: Literal["official", "timm", "plain"] = "official",
           padding: Padding = "same", shortcut: ShortcutKind = "conv",
           stochdepth_scale: bool = False, fc_init_std: float = 0.01, in_chans: int = 3,
           norm_order: NormOrder = "norm_act", norm_kwargs: dict[str, Any] | None = None,
           input_norm: bool = False, fixup: bool = False, weighted_sum: bool = False,
           device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ResidualNetwork:
    """Build an NF-ResNet (``norm=None``) or its normalized twin.

    Args:
        depth: 26/50/101/152/200/288/600 (ImageNet) or 6n+2 (small input), or explicit stage depths.
        small_input: 32×32 variant (3×3 stem, no max-pool, basic blocks).
        width: channel multiplier; ImageNet default 4 gives [256, 512, 1024, 2048] as officially.
        norm: None (normalizer-free) or a key of :data:`~normfree.layers.NORMS` (``"bn"``, ``"gn"``,
            ``"evonorm_b0"``, ``"evonorm_s0"``).
        alpha: variance added per block (normalizer-free nets; normalized nets have α = 1 and their
            registered names reject the option). None: no α/β at all, a plain residual sum (SkipInit,
            Fixup).
        stochdepth_rate: the last block's drop rate approaches this (official rate·i/N schedule).
        drop_rate: dropout before the classifier (the official code requires one; 0 here).
        skipinit_gain: initial value of each block's scalar branch gain (0 officially; 1 for analysis);
            normalized nets have no gain.
        std_conv: Scaled WS (True) or plain He-initialized convs (to study the mean shift).
        ws / padding / shortcut / stochdepth_scale: official behaviour by default; ``ws="timm"``,
            ``padding="symmetric"``, ``shortcut="avgpool_conv"`` and ``stochdepth_scale=True`` match timm.
        fc_init_std: classifier weight std (0 → zeros, as the official BN baseline).
        norm_order: ``"norm_act"`` (BN→ReLU) or ``"act_norm"`` (ReLU→BN).
        norm_kwargs: norm-layer options, e.g. ``{"scale_init": 0.1}`` (revisited BN), ``{"groups": 32}``.
        input_norm: revisited BN's online input normalization: a BN on the raw images before the stem
            (scale 0.58 × ``norm_kwargs["scale_init"]``, shift frozen at 0).
        fixup: Fixup (Zhang et al. 2019): post-activation blocks with scalar biases, the skip gain as
            the per-branch multiplier (pass ``skipinit_gain=1``, ``alpha=None``, ``std_conv=False``),
            and Fixup's initialization (:func:`~normfree.models.baselines.fixup_init`).
        device / dtype: where and in which dtype the parameters are created (``"meta"`` works).
        weighted_sum: a fixed scale after every residual sum, for AutoInit (:func:`normfree.init.autoinit`).
    """
    depths = _stage_depths(depth, small_input)
    if width <= 0:
        raise ModelSpecError(f"width must be positive, got {width}")
    if fixup and (alpha is not None or skipinit_gain == 0):
        raise ModelSpecError("Fixup has no α/β and its branch multiplier starts at 1: "
                         "pass alpha=None and skipinit_gain=1")
    layers = LayerFactory(act=activation, norm=norm, std_conv=std_conv, ws=ws, padding=padding,
                          norm_order=norm_order, norm_kwargs=dict(norm_kwargs or {}), fixup=fixup,
                          weighted_sum=weighted_sum, device=device, dtype=dtype)
    base_widths, strides = ((16, 32, 64), (1, 2, 2)) if small_input else ((64, 128, 256, 512), (1, 2, 2, 2))
    widths = [max(1, int(c * width)) for c in base_widths]
    stem_ch = 16 if small_input else max(1, int(16 * width))
    stem = _stem(layers, in_chans, stem_ch, small_input, input_norm)

    def block_fn(in_ch: int, s: int, b: int, beta: float, rate: float) -> ResidualBlock:
        out, stride = widths[s], (strides[s] if b == 0 else 1)
        if small_input:
            convs = [ConvSpec(out, 3, stride), ConvSpec(out, 3)]
        else:
            mid = max(1, int(out * 0.25))
            convs = [ConvSpec(mid, 1), ConvSpec(mid, 3, stride), ConvSpec(out, 1)]
        return ResidualBlock(in_ch, convs, layers, beta=beta, alpha=1.0 if alpha is None else alpha,
                             se_hidden=max(1, int(out * se_ratio)) if use_se else 0,
                             shortcut=shortcut, drop_path_rate=rate, drop_path_scale=stochdepth_scale,
                             skipinit_gain=skipinit_gain)

    stages, expected = build_stages(stem_ch, depths, block_fn, alpha or 0.0, stochdepth_rate)
    cfg = (pretrained_cfg(num_classes, 32, 32, policy="none", interpolation="bilinear",
                          mean=CIFAR10_MEAN, std=CIFAR10_STD) if small_input
           else pretrained_cfg(num_classes, 224, 224))
    return ResidualNetwork(stem, stages, layers.final_layer(widths[-1]), widths[-1], num_classes,
                           drop_rate, fc_init_std,
                           expected if layers.normalizer_free and alpha is not None else None, cfg,
                           extra_init=fixup_init if fixup else None, **layers.factory_kwargs)


def _stem(layers: LayerFactory, in_chans: int, channels: int, small_input: bool,
          input_norm: bool) -> nn.Sequential:
    """[input BN] → 3×3 conv (32×32 nets) or 7×7/2 conv [→ Fixup's bias → act] → 3×3/2 max-pool."""
    first = {}
    if input_norm:
        first["input_norm"] = input_batch_norm(in_chans, layers.norm_kwargs.get("scale_init", 1.0),
                                               **layers.factory_kwargs)
    conv = layers.conv(in_chans, channels, 3) if small_input else layers.conv(in_chans, channels, 7, 2)
    stem = named_seq(**first, conv=conv)
    post = layers.post_layer()
    if post is not None:
        stem.add_module("act", post)
    if not small_input:
        stem.add_module("pool", MaxPoolSame(3, 2, layers.padding))
    return stem


NF_ONLY = {"alpha": "a normalized network has no α (its blocks add the branch with weight 1)",
           "skipinit_gain": "a normalized network has no skip gain"}
"""Options that the normalized baselines reject (``create_model`` raises ``ModelOptionError``)."""


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
        register_model(f"{prefix}_{key}", resnet, fixed=fixed, defaults=defaults, family=f"{prefix}_{size.kind}",
                       unsupported=NF_ONLY if "norm" in fixed else {}, description=description)

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
