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

from typing import Literal, Sequence

import torch

from ..errors import ModelSpecError
from ..layers import LayerFactory
from ..layers.conv import Padding
from .blocks import ConvSpec, ResidualBlock, ShortcutKind, build_stages
from .net import ResidualNetwork, named_seq
from .regnet import grouped_width
from .variants import Variant, lookup, variant_model

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


def nfnet(variant: str = "F0", *, num_classes: int = 1000, width: float = 1.0,
          widths: Sequence[int] | None = None, depths: Sequence[int] | None = None,
          expansion: float = 0.5, group_width: int = 128, se_ratio: float = 0.5,
          alpha: float = 0.2, stochdepth_rate: float = 0.25, drop_rate: float | None = None,
          activation: str = "gelu", final_conv_mult: float = 2.0, use_two_convs: bool = True,
          fc_init_std: float = 0.01, padding: Padding = "same",
          ws: Literal["official", "timm"] = "official", shortcut: ShortcutKind = "avgpool_conv",
          stochdepth_scale: bool = False, gamma_in_act: bool = False, skipinit_gain: float = 0.0,
          std_conv: bool = True,
          in_chans: int = 3, device: torch.device | str | None = None,
          dtype: torch.dtype | None = None) -> ResidualNetwork:
    """Build an NFNet with the official structure.

    Args:
        variant: "F0" … "F7" or "F0+" … "F7+"; ``widths``/``depths`` override the table (e.g. tiny
            test instances; the stem's last conv keeps ``widths[0] // 2`` as officially).
        width: multiplier on the stage widths (not on the stem, as officially).
        expansion / group_width: bottleneck width = int(out·expansion) rounded down to group_width.
        stochdepth_rate: 0.25 (experiment config of the published models).
        drop_rate: classifier dropout; None takes the variant's value.
        activation: "gelu" (tanh approximation, as JAX) or "gelu_exact" (erf, as timm's dm_nfnet).
        final_conv_mult: the final 1×1 conv has this many times the last stage's channels.
        use_two_convs: the second grouped 3×3 (``conv1b``) of the NFNet block.
        padding / ws / shortcut / stochdepth_scale / gamma_in_act: official by default; timm's
            ``dm_nfnet_*`` are ``ws="timm", gamma_in_act=True, activation="gelu_exact"``.
        skipinit_gain: initial value of each block's scalar branch gain (0 officially).
        std_conv: Scaled WS (True) or plain He-initialized convs, to study the mean shift as for
            the NF-ResNets.
        device / dtype: where and in which dtype the parameters are created (``"meta"`` works).
    """
    v = lookup(NFNET_VARIANTS, variant, "NFNet")
    v = Variant(tuple(widths or v.widths), tuple(depths or v.depths), v.train_size, v.test_size,
                v.drop_rate if drop_rate is None else drop_rate)
    if len(v.widths) != 4 or len(v.depths) != 4:
        raise ModelSpecError(f"NFNets have four stages; got widths {v.widths} and depths {v.depths}")
    layers = LayerFactory(act=activation, std_conv=std_conv, ws=ws, padding=padding, gamma_in_act=gamma_in_act,
                          device=device, dtype=dtype)
    stage_out = [int(w * width) for w in v.widths]
    stem_ch = v.widths[0] // 2
    stem = named_seq(conv0=layers.conv(in_chans, 16, 3, 2), act0=layers.act_layer(16),
                     conv1=layers.conv(16, 32, 3), act1=layers.act_layer(32),
                     conv2=layers.conv(32, 64, 3), act2=layers.act_layer(64),
                     conv3=layers.conv(64, stem_ch, 3, 2))

    def block_fn(in_ch: int, s: int, b: int, beta: float, rate: float) -> ResidualBlock:
        out = stage_out[s]
        mid, groups = grouped_width(out * expansion, group_width)
        stride = (1 if s == 0 else 2) if b == 0 else 1
        convs = [ConvSpec(mid, 1, name="conv0"), ConvSpec(mid, 3, stride, groups, name="conv1")]
        if use_two_convs:
            convs.append(ConvSpec(mid, 3, 1, groups, name="conv1b"))
        convs.append(ConvSpec(out, 1, name="conv2"))
        return ResidualBlock(in_ch, convs, layers, beta=beta, alpha=alpha,
                             se_hidden=max(1, int(out * se_ratio)), se_after=-1, shortcut=shortcut,
                             drop_path_rate=rate, drop_path_scale=stochdepth_scale,
                             skipinit_gain=skipinit_gain)

    stages, expected = build_stages(stem_ch, v.depths, block_fn, alpha, stochdepth_rate)
    final_ch = int(final_conv_mult * stage_out[-1])
    return variant_model(stem, stages, expected, layers, stage_out[-1], final_ch, v, num_classes,
                         fc_init_std, "resize_crop_32")


def _register() -> None:
    from ..registry import register_model

    for key in NFNET_VARIANTS:
        name = f"nfnet_{key.lower().replace('+', 'plus')}"
        register_model(name, nfnet, fixed={"variant": key}, family="nfnet",
                       description=f"NFNet-{key}, official DeepMind structure")


_register()
