"""Backward-pass SPP: the gradient of a loss at every block output, to spot vanishing or exploding
gradients at initialization. Uses ``torch.autograd.grad``, so parameters' ``.grad`` stay untouched."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ModelSpecError
from .stats import channel_stats, first_tensor

LossFn = Callable[[object, torch.Tensor], torch.Tensor]
"""``loss_fn(model_output, labels) -> scalar``."""


def cross_entropy(output: object, labels: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy of ``(N, classes)`` logits."""
    logits = first_tensor(output)
    if logits.ndim != 2:
        raise ModelSpecError(f"the default loss needs (batch, classes) logits, the model returned shape "
                         f"{tuple(logits.shape)}; pass loss_fn=")
    return F.cross_entropy(logits.float(), labels)


def gradient_stats(block_outputs: Sequence[torch.Tensor], output: object,
                   loss_fn: LossFn | None = None,
                   seed: int = 0) -> tuple[list[float], list[float]]:
    """(average channel variance, L2 norm) of d loss / d block output, per block.

    ``loss_fn(output, labels)`` gets seeded random labels in ``[0, output.shape[1])`` (random labels
    make the gradient a property of the network, not of a dataset); default :func:`cross_entropy`.
    Blocks the loss does not depend on report NaN.
    """
    logits = first_tensor(output)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, logits.shape[-1], (logits.shape[0],), generator=gen).to(logits.device)
    loss = (loss_fn or cross_entropy)(output, labels)
    grads = torch.autograd.grad(loss, list(block_outputs), allow_unused=True)
    nan = float("nan")
    var = [channel_stats(g)[1] if g is not None else nan for g in grads]
    norm = [g.float().norm().item() if g is not None else nan for g in grads]
    return var, norm
