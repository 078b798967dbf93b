"""Per-example gradients, the building block of DP-SGD, for any model without batch statistics.

A normalizer-free network has no batch statistics, so example *i*'s gradient depends on example *i*
alone and can be clipped and noised as differential privacy requires. BatchNorm in training mode mixes
the examples of a batch (its per-example gradient is not defined by one example), which is why DP
libraries refuse it. This uses ``torch.func`` (``vmap`` over ``grad``): no per-layer hooks, so Scaled WS
convs, folded blocks, SE and stochastic depth all work unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

from ..layers.norms import EvoNormB0

_BATCH_STATS = (nn.modules.batchnorm._BatchNorm, EvoNormB0)


def per_example_grads(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                      chunk_size: int | None = None, return_loss: bool = False
                      ) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``{name: (B, *param.shape)}``: the gradient of ``loss_fn(model(x_i), y_i)`` for every example
    (with ``return_loss``, also the (B,) losses, from the same forward pass).

    Trainable parameters only. Random layers (stochastic depth, dropout) draw independently per example.
    ``chunk_size`` bounds memory by vectorizing over that many examples at a time. Raises ``ValueError``
    for a model that uses batch statistics in its current mode (BatchNorm or EvoNorm-B0 in training).
    """
    mixing = [name for name, m in model.named_modules() if isinstance(m, _BATCH_STATS) and m.training]
    if mixing:
        raise ValueError(f"{mixing[0]} ({type(model.get_submodule(mixing[0])).__name__}) normalizes with "
                         "batch statistics in training mode, so one example's gradient depends on the "
                         "others; use a normalizer-free model, or call model.eval() first")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name: p for name, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, frozen, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    fn = grad_and_value(loss_one) if return_loss else grad(loss_one)
    return vmap(fn, in_dims=(None, 0, 0), randomness="different", chunk_size=chunk_size)(params, inputs, targets)
