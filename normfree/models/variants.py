"""Per-variant configuration shared by NF-RegNet and NFNet: tables as data, evaluation settings.

Each family file holds one table of :class:`Variant` rows copied from the official ``nfnets/base.py``;
the builders read the table and attach the variant's resolutions, dropout and evaluation
preprocessing to the model so that training and evaluation code need not look them up again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from ..layers import LayerFactory
from .net import ResNet, named_seq

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EvalPolicy = Literal["crop_resize", "resize_crop_32"]


@dataclass(frozen=True)
class Variant:
    """One row of an official variant table (widths before any width multiplier)."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    train_size: int
    test_size: int
    drop_rate: float


def eval_settings(policy: EvalPolicy, size: int, crop_pct: float | None = None,
                  interpolation: str = "bicubic") -> dict[str, Any]:
    """Evaluation preprocessing as a plain dict (travels with the model as ``model.eval_settings``).

    Official policies (DeepMind ``dataset.py``), both with 32 px of margin so ``crop_pct = S/(S+32)``:
    ``crop_resize`` (NF-RegNet) centre-crops the short side then resizes to S keeping the aspect;
    ``resize_crop_32`` (NFNet) squashes the whole image to (S+32)² then centre-crops S.
    Images are scaled to [0, 1] and normalized with the ImageNet mean/std.
    """
    if policy not in ("crop_resize", "resize_crop_32"):
        raise ValueError(f"unknown eval policy {policy!r}; choose 'crop_resize' or 'resize_crop_32'")
    return {
        "policy": policy,
        "crop_mode": "center" if policy == "crop_resize" else "squash",
        "input_size": int(size),
        "crop_pct": round(size / (size + 32), 4) if crop_pct is None else float(crop_pct),
        "interpolation": interpolation,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }


def variant_model(stem: nn.Module, stages: nn.Sequential, expected: list[float], layers: LayerFactory,
                  in_ch: int, final_ch: int, variant: Variant, num_classes: int, fc_init_std: float,
                  policy: EvalPolicy) -> ResNet:
    """The NF-RegNet/NFNet head (1×1 final conv → activation → pool → dropout → classifier) on the
    given stem and stages, with ``train_size``, ``test_size`` and ``eval_settings`` exposed."""
    final = named_seq(conv=layers.conv(in_ch, final_ch, 1), act=layers.act_layer(final_ch))
    model = ResNet(stem, stages, final, final_ch, num_classes, variant.drop_rate, fc_init_std, expected,
                   input_size=variant.test_size)
    model.train_size = variant.train_size
    model.test_size = variant.test_size
    model.eval_settings = eval_settings(policy, variant.test_size)
    return model


def lookup(table: dict[str, Variant], variant: str, family: str) -> Variant:
    """``table[variant]`` with an error that lists the valid names."""
    key = variant.upper()
    if key not in table:
        raise ValueError(f"unknown {family} variant {variant!r}; choose one of {', '.join(table)}")
    return table[key]
