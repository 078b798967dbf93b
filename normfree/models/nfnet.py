"""NFNets F0–F7 and the wider F0+–F7+ (Brock, De, Smith & Simonyan, ICML 2021), official structure.

DeepMind ``nfnets/nfnet.py``: a 4-conv stem (3×3 convs with 16, 32, 64 and width[0]/2 channels, strides
2, 1, 1, 2, activations between, none after the last); stages of stride 1, 2, 2, 2; blocks 1×1 →
3×3 grouped (stride) → 3×3 grouped (``conv1b``) → 1×1, bottleneck width out/2 rounded down to the
group width 128, SE(0.5, ×2) after the last 1×1; transition shortcut 2×2 average pool + 1×1 conv
(plain 1×1 in the stride-1 first stage); final 1×1 conv to 2× the last width, GELU·γ (JAX's tanh
approximation; ``activation="gelu_exact"`` for erf), pool, dropout, classifier N(0, 0.01).

Stochastic depth defaults to 0.25, the rate of the experiment config that trained the published
NFNets (``experiment_nfnets.py``); the ``NFNet`` constructor's own default is 0.1.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .blocks import ConvSpec
from .builder import BASELINE_ONLY, OPTION_NAMES, Family, NetConfig, Blueprint, build_network
from .net import ResidualNetwork, named_seq
from .variants import Variant, lookup

_F_DEPTHS = {0: (1, 2, 6, 3), 1: (2, 4, 12, 6), 2: (3, 6, 18, 9), 3: (4, 8, 24, 12),
             4: (5, 10, 30, 15), 5: (6, 12, 36, 18), 6: (7, 14, 42, 21), 7: (8, 16, 48, 24)}
_F_SIZES = {0: (192, 256, 0.2), 1: (224, 320, 0.3), 2: (256, 352, 0.4), 3: (320, 416, 0.4),
            4: (384, 512, 0.5), 5: (416, 544, 0.5), 6: (448, 576, 0.5), 7: (480, 608, 0.5)}
NFNET_WIDTHS = (256, 512, 1536, 1536)
NFNET_PLUS_WIDTHS = (384, 768, 2048, 2048)

NFNET_VARIANTS: dict[str, Variant] = {
    **{f"F{i}": Variant(NFNET_WIDTHS, _F_DEPTHS[i], *_F_SIZES[i]) for i in range(8)},
    **{f"F{i}+": Variant(NFNET_PLUS_WIDTHS, _F_DEPTHS[i], *_F_SIZES[i]) for i in range(8)},
}
"""Official ``base.nfnet_params``: widths, depths, train/test px, dropout; F+ = same with wider stages."""


def _stem(r: Blueprint) -> tuple[nn.Module, int]:
    """3×3 convs with 16, 32, 64 and widths[0]/2 channels (of the row, before the multiplier), strides
    2, 1, 1, 2, activations between them."""
    layers, ch = r.layers, r.variant.widths[0] // 2
    stem = named_seq(conv0=layers.conv(r.options.in_chans, 16, 3, 2), act0=layers.act_layer(16),
                     conv1=layers.conv(16, 32, 3), act1=layers.act_layer(32),
                     conv2=layers.conv(32, 64, 3), act2=layers.act_layer(64),
                     conv3=layers.conv(64, ch, 3, 2))
    return stem, ch


def _block(r: Blueprint, in_ch: int, s: int, b: int, stride: int) -> tuple[list[ConvSpec], int]:
    """1×1 → 3×3 grouped (stride) → [3×3 grouped ``conv1b``] → 1×1, width ``expansion``·out rounded
    down to the group width; SE after the last conv."""
    out = r.widths[s]
    mid, groups = r.grouped(r.channels(out * r.options.expansion))
    convs = [ConvSpec(mid, 1, name="conv0"), ConvSpec(mid, 3, stride, groups, name="conv1")]
    if r.options.use_two_convs:
        convs.append(ConvSpec(mid, 3, 1, groups, name="conv1b"))
    return [*convs, ConvSpec(out, 1, name="conv2")], -1


def _final_width(r: Blueprint) -> int:
    return r.channels(r.options.final_conv_mult * r.widths[-1])


NFNET = Family(
    "NFNet", _stem, _block, _final_width, num_stages=4, data={"policy": "resize_crop_32"},
    defaults={"expansion": 0.5, "group_width": 128, "use_se": True, "se_ratio": 0.5, "activation": "gelu",
              "stochdepth_rate": 0.25, "shortcut": "avgpool_conv"},
    rejects=BASELINE_ONLY)
"""NFNet: 4-conv stem, stages of stride 1, 2, 2, 2, grouped bottlenecks with two 3×3 convs and SE, final
conv 2× the last width, GELU, classifier N(0, 0.01); evaluated with the official squash-then-crop."""


def nfnet(variant: str = "F0", **options: Any) -> ResidualNetwork:
    """Build an NFNet with the official structure: ``build_network(NetConfig(NFNET, row), **options)``
    for the row ``variant`` ("F0" … "F7", "F0+" … "F7+") of :data:`NFNET_VARIANTS`.

    ``options`` are :class:`~normfree.models.builder.NetOptions`; NFNet defaults: width 1 (on the
    stages, not on the stem, as officially), expansion 0.5 of the output rounded down to the group
    width 128, SE 0.5 of the output, GELU (JAX's tanh approximation; ``"gelu_exact"`` for erf),
    stochastic depth 0.25, average-pool + 1×1 transition shortcut, final conv ``final_conv_mult`` = 2×
    the last width, ``use_two_convs``, the variant's dropout. timm's ``dm_nfnet_*`` are
    ``ws="timm", gamma_in_act=True, activation="gelu_exact"``.
    """
    return build_network(NetConfig(NFNET, lookup(NFNET_VARIANTS, variant, "NFNet")), **options)


def _register() -> None:
    from ..registry import register_model

    for key in NFNET_VARIANTS:
        name = f"nfnet_{key.lower().replace('+', 'plus')}"
        register_model(name, nfnet, fixed={"variant": key}, family="nfnet", options=("variant", *OPTION_NAMES),
                       unsupported=dict(NFNET.rejects), description=f"NFNet-{key}, official DeepMind structure")


_register()
