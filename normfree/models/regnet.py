"""NF-RegNets B0–B8 (Brock, De & Smith, ICLR 2021), the official DeepMind ``nfnets/nf_regnet.py``.

Structure: 3×3/2 Scaled-WS stem (no activation, no pool); four stages, each starting with a stride-2
block; inverted-bottleneck blocks 1×1 expand → 3×3 grouped (group width 8, stride) → SE(0.5, ×2) →
1×1 project, with the expansion taken from the block's *input* channels (2.25, but 1 for the very first
block); widths scaled by 0.75 with no rounding; transition shortcut = 2×2 average pool + 1×1 conv;
final 1×1 conv to ``int(1280·C//440)`` channels, SiLU·γ, global pool, dropout, zero-initialized
classifier. Variant widths/depths/resolutions/dropout are the official ``base.nf_regnet_params``.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .blocks import ConvSpec
from .builder import BASELINE_ONLY, OPTION_NAMES, Family, NetConfig, Blueprint, build_network
from .builder import make_divisible as make_divisible
from .net import ResidualNetwork, named_seq
from .variants import Variant, lookup

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



def _stem(r: Blueprint) -> tuple[nn.Module, int]:
    """One 3×3/2 conv to the first stage's width, no activation, no pool."""
    ch = r.widths[0]
    return named_seq(conv=r.layers.conv(r.options.in_chans, ch, 3, 2)), ch


def _block(r: Blueprint, in_ch: int, s: int, b: int, stride: int) -> tuple[list[ConvSpec], int]:
    """1×1 expand (from the input channels; none in the very first block, as EfficientNet) → 3×3 grouped
    (stride) → 1×1 project; SE after the 3×3."""
    expand = 1.0 if s == 0 and b == 0 else r.options.expansion
    mid, groups = r.grouped(r.channels(in_ch * expand))
    return [ConvSpec(mid, 1), ConvSpec(mid, 3, stride, groups), ConvSpec(r.widths[s], 1)], 1


def _final_width(r: Blueprint) -> int:
    """1280·C/440 for a last stage of C channels: truncated after the multiplier as officially, or
    rounded from the unscaled width like timm when ``channel_divisor`` is set."""
    if r.options.channel_divisor is None:
        return int(1280 * r.widths[-1] // 440)
    return r.channels(r.options.width * (1280 * r.variant.widths[-1] // 440))


NF_REGNET = Family(
    "NF-RegNet", _stem, _block, _final_width, first_stride=2, data={"policy": "crop_resize"},
    defaults={"width": 0.75, "expansion": 2.25, "group_width": 8, "use_se": True, "se_ratio": 0.5,
              "activation": "silu", "fc_init_std": 0.0, "shortcut": "avgpool_conv"},
    rejects={**BASELINE_ONLY, "final_conv_mult": "the NF-RegNet's final conv is 1280·C/440 wide, officially",
             "use_two_convs": "only the NFNet block has a second grouped 3×3 (conv1b)"})
"""NF-RegNet: stride-2 stages, inverted bottlenecks with grouped 3×3 and SE, final conv, SiLU,
zero-initialized classifier, ×0.75 widths; evaluated with the official crop-then-resize."""


def nf_regnet(variant: str = "B0", **options: Any) -> ResidualNetwork:
    """Build an NF-RegNet with the official structure: ``build_network(NetConfig(NF_REGNET, row),
    **options)`` for the row ``variant`` ("B0" … "B8") of :data:`NF_REGNET_VARIANTS`.

    ``options`` are :class:`~normfree.models.builder.NetOptions`; NF-RegNet defaults: width 0.75
    (applied without rounding), expansion 2.25 of the block's input channels, group width 8, SE 0.5
    of the expanded width, SiLU, stochastic depth 0.1, average-pool + 1×1 transition shortcut,
    zero classifier, the variant's dropout. ``channel_divisor=8`` rounds channels like timm (B0 stem
    40 instead of 36). ``widths``/``depths`` replace the row's, e.g. for tiny test instances.
    """
    return build_network(NetConfig(NF_REGNET, lookup(NF_REGNET_VARIANTS, variant, "NF-RegNet")), **options)


def _register() -> None:
    from ..registry import register_model

    for key in NF_REGNET_VARIANTS:
        register_model(f"nf_regnet_{key.lower()}", nf_regnet, fixed={"variant": key}, family="nf_regnet",
                       options=("variant", *OPTION_NAMES), unsupported=dict(NF_REGNET.rejects),
                       description=f"NF-RegNet-{key}, official DeepMind structure")


_register()
