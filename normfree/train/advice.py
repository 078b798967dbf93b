"""Warnings for settings that are valid but known to go wrong, given before the first step.

The defaults (lr 0.1 at batch 128, one warmup epoch) are the CIFAR-scale NF-ResNet recipe: 390 warmup
steps on CIFAR-10. On a small data set an epoch is a step or two, so the warmup all but vanishes and a
large normalizer-free network diverges in its first steps. Measured (docs/training.md, "Small data
sets"): ``nf_resnet26`` on 256 images of 3 classes, batch 128 (2 warmup steps), train loss 1.6 → 2e5 by
step 4 at lr 0.1, → 7e5 by step 12 at lr 0.01; with ``--agc-clip 0.01`` it spiked to 225 and came back
to 0.58 by step 10; ``--recipe nf_cifar`` (an NF-ResNet-20) went 1.1 → 0.003 smoothly.
"""
from __future__ import annotations

MIN_WARMUP_STEPS = 50
"""Fewer warmup steps than this count as almost none (CIFAR-10 at the defaults has 390)."""

LARGE_MODEL = 2_000_000
"""Parameters above which the first steps at full lr are known to blow up (the CIFAR ResNets, 0.27–0.86M
parameters, train at the defaults on the 1500-image demo set and on 256 images)."""


def small_data_warning(model: str, params: int, train_images: int, batch_size: int, lr: float,
                       warmup_epochs: float, steps_per_epoch: int, agc_clip: float) -> str | None:
    """The warning for a large model whose warmup is a handful of steps without AGC, else None."""
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    if params < LARGE_MODEL or warmup_steps >= MIN_WARMUP_STEPS or agc_clip > 0:
        return None
    return (f"{train_images} training images at batch {batch_size} are {steps_per_epoch} step(s) per epoch, "
            f"so the {warmup_epochs:g}-epoch warmup is {warmup_steps} step(s): a {params / 1e6:.1f}M-parameter "
            f"{model} at lr {lr:g} diverges in its first steps on so little data (a lower lr alone did not "
            "prevent it). Add adaptive gradient clipping (--agc-clip 0.01), give the warmup more steps (a "
            "smaller --batch-size, more --epochs and --warmup-epochs), or train a small model (--recipe "
            "nf_cifar: an NF-ResNet-20); see docs/training.md, 'Small data sets'")
