"""Per-variant configuration shared by the families: variant rows as data, and ``pretrained_cfg``.

NF-RegNet and NFNet each hold one table of :class:`Variant` rows copied from the official
``nfnets/base.py``; the builders read the table and attach the variant's resolutions, dropout and
evaluation preprocessing to the model (``model.pretrained_cfg``), so that training and evaluation
code need not look them up again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from ..errors import ModelSpecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

EvalPolicy = Literal["crop_resize", "resize_crop_32"]


@dataclass(frozen=True)
class Variant:
    """One row of an official variant table (widths before any width multiplier)."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    train_size: int
    test_size: int
    drop_rate: float


def pretrained_cfg(num_classes: int, train_size: int, test_size: int, *,
                   policy: EvalPolicy | Literal["center_crop", "none"] = "center_crop",
                   crop_pct: float | None = None, interpolation: str = "bicubic",
                   mean: tuple[float, ...] = IMAGENET_MEAN,
                   std: tuple[float, ...] = IMAGENET_STD) -> dict[str, Any]:
    """The model's data defaults as a plain dict (timm's ``pretrained_cfg`` keys, plus ``crop_mode``
    and ``eval_policy``); it travels with the model as ``model.pretrained_cfg``.

    Official policies (DeepMind ``dataset.py``), both with 32 px of margin so ``crop_pct = S/(S+32)``:
    ``crop_resize`` (NF-RegNet) centre-crops the short side then resizes to S keeping the aspect;
    ``resize_crop_32`` (NFNet) squashes the whole image to (S+32)² then centre-crops S.
    ``center_crop`` (the ResNets) resizes the short side to S/0.875 and centre-crops S; ``none``
    (32×32 nets) uses the images as they are. Images are scaled to [0, 1] and normalized with
    ``mean``/``std``.
    """
    margins = {"crop_resize": None, "resize_crop_32": None, "center_crop": 0.875, "none": 1.0}
    if policy not in margins:
        raise ModelSpecError(f"unknown eval policy {policy!r}; choose one of {', '.join(margins)}")
    default_crop = margins[policy] or round(test_size / (test_size + 32), 4)
    return {
        "input_size": (3, int(train_size), int(train_size)),
        "test_input_size": (3, int(test_size), int(test_size)),
        "crop_pct": default_crop if crop_pct is None else float(crop_pct),
        "crop_mode": "squash" if policy == "resize_crop_32" else "center",
        "eval_policy": policy,
        "interpolation": interpolation,
        "mean": tuple(mean),
        "std": tuple(std),
        "num_classes": num_classes,
    }


def lookup(table: Mapping[str, Variant], variant: str, family: str) -> Variant:
    """``table[variant]`` with an error that lists the valid names."""
    key = variant.upper()
    if key not in table:
        raise ModelSpecError(f"unknown {family} variant {variant!r}; choose one of {', '.join(table)}")
    return table[key]
