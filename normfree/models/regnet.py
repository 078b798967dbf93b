"""NF-RegNets B0–B8 (Brock, De & Smith, ICLR 2021), the official DeepMind ``nfnets/nf_regnet.py``.

Structure: 3×3/2 Scaled-WS stem (no activation, no pool); four stages, each starting with a stride-2
block; inverted-bottleneck blocks 1×1 expand → 3×3 grouped (group width 8, stride) → SE(0.5, ×2) →
1×1 project, with the expansion taken from the block's *input* channels (2.25, but 1 for the very first
block); widths scaled by 0.75 with no rounding; transition shortcut = 2×2 average pool + 1×1 conv;
final 1×1 conv to ``int(1280·C//440)`` channels, SiLU·γ, global pool, dropout, zero-initialized
classifier. Variant widths/depths/resolutions/dropout are the official ``base.nf_regnet_params``.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch

from ..errors import ModelSpecError
from ..layers import LayerFactory
from ..layers.conv import Padding
from .blocks import ConvSpec, ResidualBlock, ShortcutKind, build_stages
from .net import ResidualNetwork, named_seq
from .variants import Variant, lookup, variant_model

NF_REGNET_VARIANTS: dict[str, Variant] = {
    "B0": Variant((48, 104, 208, 440), (1, 3, 6, 6), 192, 224, 0.2),
    "B1": Variant((48, 104, 208, 440), (2, 4, 7, 7), 224, 256, 0.2),
    "B2": Variant((56, 112, 232, 488), (2, 4, 8, 8), 240, 272, 0.3),
    "B3": Variant((56, 128, 248, 528), (2, 5, 9, 9), 288, 320, 0.3),
    "B4": Variant((64, 144, 288, 616), (2, 6, 11, 11), 320, 384, 0.4),
    "B5": Variant((80, 168, 336, 704), (3, 7, 14, 14), 384, 456, 0.4),
    "B6": Variant((88, 184, 376, 792), (3, 8, 16, 16), 448, 528, 0.5),
    "B7": Variant((96, 208, 416, 880), (4, 10, 19, 19), 512, 600, 0.5),
    "B8": Variant((104, 232, 456, 968), (4, 11, 22, 22), 600, 672, 0.5),
}
"""Official ``base.nf_regnet_params``: stage widths (before ×0.75), depths, train/test px, dropout."""


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


def nf_regnet(variant: str = "B0", *, num_classes: int = 1000, width: float = 0.75,
              widths: Sequence[int] | None = None, depths: Sequence[int] | None = None,
              expansion: float = 2.25, group_width: int = 8, se_ratio: float = 0.5,
              alpha: float = 0.2, stochdepth_rate: float = 0.1, drop_rate: float | None = None,
              activation: str = "silu", fc_init_std: float = 0.0, padding: Padding = "same",
              ws: Literal["official", "timm"] = "official", shortcut: ShortcutKind = "avgpool_conv",
              stochdepth_scale: bool = False, channel_divisor: int | None = None,
              std_conv: bool = True,
              skipinit_gain: float = 0.0, in_chans: int = 3, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> ResidualNetwork:
    """Build an NF-RegNet with the official structure.

    Args:
        variant: "B0" … "B8" (official table); ``widths``/``depths`` override its stage widths (before
            the multiplier) and depths, e.g. for tiny test instances.
        width: channel multiplier applied without rounding (0.75 officially).
        expansion / group_width / se_ratio: inverted-bottleneck ratio (from input channels), channels
            per group of the 3×3 conv, SE hidden ratio of the expanded width.
        stochdepth_rate: rate·i/N schedule (0.1 officially, constructor and experiment alike).
        drop_rate: classifier dropout; None takes the variant's value.
        fc_init_std: 0 gives the official zero-initialized classifier.
        padding / ws / shortcut / stochdepth_scale: official by default; alternatives for other ports.
        channel_divisor: None truncates channels as officially; 8 rounds them like timm
            (``make_divisible``: B0 stem 40 instead of 36, SE hidden and final conv rounded too).
        skipinit_gain: initial value of each block's scalar branch gain (0 officially).
        std_conv: Scaled WS (True) or plain He-initialized convs, to study the mean shift as for
            the NF-ResNets.
        device / dtype: where and in which dtype the parameters are created (``"meta"`` works).
    """
    v = lookup(NF_REGNET_VARIANTS, variant, "NF-RegNet")
    v = Variant(tuple(widths or v.widths), tuple(depths or v.depths), v.train_size, v.test_size,
                v.drop_rate if drop_rate is None else drop_rate)
    if len(v.widths) != len(v.depths):
        raise ModelSpecError(f"widths {v.widths} and depths {v.depths} must have the same length")
    layers = LayerFactory(act=activation, std_conv=std_conv, ws=ws, padding=padding, device=device, dtype=dtype)
    div = channel_divisor

    def rnd(value: float, round_limit: float = 0.9) -> int:
        return int(value) if div is None else make_divisible(value, div, round_limit)

    stage_out = [rnd(w * width) for w in v.widths]
    stem_ch = stage_out[0]
    stem = named_seq(conv=layers.conv(in_chans, stem_ch, 3, 2))

    def block_fn(in_ch: int, s: int, b: int, beta: float, rate: float) -> ResidualBlock:
        expand = 1.0 if s == 0 and b == 0 else expansion  # EfficientNet: no expansion in block 0
        mid, groups = grouped_width(rnd(in_ch * expand), group_width)
        convs = [ConvSpec(mid, 1), ConvSpec(mid, 3, 2 if b == 0 else 1, groups),
                 ConvSpec(stage_out[s], 1)]
        return ResidualBlock(in_ch, convs, layers, beta=beta, alpha=alpha,
                             se_hidden=max(1, rnd(mid * se_ratio, 0.0)), se_after=1,
                             shortcut=shortcut, drop_path_rate=rate, drop_path_scale=stochdepth_scale,
                             skipinit_gain=skipinit_gain)

    stages, expected = build_stages(stem_ch, v.depths, block_fn, alpha, stochdepth_rate)
    final_ch = (int(1280 * stage_out[-1] // 440) if div is None  # timm scales 1280·w/440 after
                else rnd(width * (1280 * v.widths[-1] // 440)))
    return variant_model(stem, stages, expected, layers, stage_out[-1], final_ch, v, num_classes,
                         fc_init_std, "crop_resize")


def _register() -> None:
    from ..registry import register_model

    for key in NF_REGNET_VARIANTS:
        register_model(f"nf_regnet_{key.lower()}", nf_regnet, fixed={"variant": key},
                       family="nf_regnet", description=f"NF-RegNet-{key}, official DeepMind structure")


_register()
