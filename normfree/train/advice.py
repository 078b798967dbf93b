"""Warnings for settings that are valid but known to go wrong, said before the first step.

The defaults (lr 0.1 at batch 128, one warmup epoch) are the CIFAR-scale NF-ResNet recipe: 390 warmup
steps on CIFAR-10. On a small data set an epoch is a step or two, so the warmup all but vanishes, and a
large normalizer-free network then diverges in its first steps: ``nf_resnet26`` on 256 images at the
defaults went from loss 1.6 to 2e5 by step 4 (docs/training.md, "Small data sets").
"""
from __future__ import annotations

MIN_WARMUP_STEPS = 50
"""Fewer warmup steps than this is "almost none" (CIFAR-10 at the defaults has 390)."""

LARGE_MODEL = 2_000_000
"""Parameters above which the first full-lr steps are known to blow up without warmup (the CIFAR ResNets,
0.27–0.86M parameters, train at the defaults on the 1500-image demo set)."""

SAFE_LR = 0.01
"""The lr that trained ``nf_resnet26`` on 256 images where the default 0.1 diverged (docs/training.md)."""


def small_data_warning(model: str, params: int, train_images: int, batch_size: int, lr: float,
                       warmup_epochs: float, steps_per_epoch: int) -> str | None:
    """The warning for a large model whose warmup is a handful of steps at a high lr, else None."""
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    if params < LARGE_MODEL or lr <= SAFE_LR or warmup_steps >= MIN_WARMUP_STEPS:
        return None
    return (f"{train_images} training images at batch {batch_size} are {steps_per_epoch} step(s) per epoch, "
            f"so the {warmup_epochs:g}-epoch warmup is {warmup_steps} step(s): a {params / 1e6:.1f}M-parameter "
            f"{model} at lr {lr:g} usually diverges within a few steps on so little data. Use --lr {SAFE_LR:g}, "
            f"or a warmup of at least {MIN_WARMUP_STEPS} steps (--warmup-epochs "
            f"{-(-MIN_WARMUP_STEPS // steps_per_epoch)}), or a smaller model (for images up to 64 px: "
            "--recipe nf_cifar, an NF-ResNet-20); see docs/training.md, 'Small data sets'")
