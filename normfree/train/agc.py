"""Adaptive Gradient Clipping (Brock et al. 2021), in the style of ``torch.nn.utils.clip_grad_norm_``.

Official formula (DeepMind ``optim.SGD_AGC``), per unit::

    max_norm = clip · max(‖W_unit‖, eps)
    G_unit  ← G_unit · max_norm / max(‖G_unit‖, 1e-6)    where ‖G_unit‖ > max_norm

A *unit* is one output unit (the fan-in of one output channel) for Linear/ConvNd weights, i.e. all axes
but dim 0 in PyTorch's ``(out, in, *k)`` layout; for ConvTransposeNd (``(in, out/groups, *k)``) it is
dim 1. Parameters that are at most 1-D after squeezing (biases, gains, scalar skip gains) use the norm
of the whole tensor, as the official ``unitwise_norm`` does.

The classifier is excluded *by module* (:func:`agc_params`), never by position in ``parameters()``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Union

import torch
from torch import nn

ParamSpec = Union[torch.Tensor, tuple[torch.Tensor, "int | None"]]
"""A parameter, or ``(parameter, unit_dim)`` where ``unit_dim`` None means whole-tensor norm."""

_GRAD_NORM_FLOOR = 1e-6  # official: G * max_norm / max(grad_norm, 1e-6)


def default_unit_dim(param: torch.Tensor, module: nn.Module | None = None) -> int | None:
    """The axis that indexes units: None (whole tensor) for ≤1-D after squeeze, 1 for ConvTranspose
    weights, else 0 (output units of Linear/ConvNd)."""
    if sum(s > 1 for s in param.shape) <= 1:
        return None
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and param is module.weight:
        return 1
    return 0


def agc_params(model: nn.Module, exclude: Iterable[nn.Module] = ()) -> list[tuple[nn.Parameter, int | None]]:
    """``(param, unit_dim)`` for every trainable parameter of ``model`` outside the modules in
    ``exclude`` (and their children), e.g. ``agc_params(model, exclude=(model.fc,))``.

    Exclusion is by module reference so that a head registered anywhere (or re-created for fine-tuning)
    is still found. Raises ``ValueError`` if an excluded module is not part of ``model``.
    """
    exclude = list(exclude)
    modules = list(model.modules())
    for ex in exclude:
        if not any(ex is m for m in modules):
            raise ValueError(f"agc_params: excluded module {type(ex).__name__} is not part of the model")
    skipped = {id(p) for ex in exclude for p in ex.parameters()}
    seen: set[int] = set()
    out: list[tuple[nn.Parameter, int | None]] = []
    for module in modules:
        for p in module.parameters(recurse=False):
            if id(p) in skipped or id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            out.append((p, default_unit_dim(p, module)))
    return out


def _split(parameters: ParamSpec | Iterable[ParamSpec]) -> list[tuple[torch.Tensor, int | None]]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    specs = []
    for item in parameters:
        p, dim = item if isinstance(item, tuple) else (item, default_unit_dim(item))
        if p.grad is not None:
            specs.append((p, dim))
    return specs


@torch.no_grad()
def clip_grad_agc_(parameters: ParamSpec | Iterable[ParamSpec], clip: float = 0.01,
                   eps: float = 1e-3) -> torch.Tensor:
    """Clip gradients in place, unit-wise, relative to the parameter norms; return the fraction of
    units clipped (a 0-d tensor, so logging it costs a device sync only when you read it).

    ``parameters``: tensors (unit axis guessed: dim 0, or whole-tensor for ≤1-D) or ``(param,
    unit_dim)`` pairs from :func:`agc_params`. Call it after ``scaler.unscale_(optimizer)`` and after
    backward of the step that updates the weights (so after the DDP all-reduce). Works with any optimizer.

    Vectorized: parameters are grouped by (shape, unit_dim, dtype, device) and each group is clipped
    with a few batched ops, so the cost does not grow with a per-parameter Python loop.
    """
    if clip <= 0 or eps < 0:
        raise ValueError(f"clip must be > 0 and eps >= 0, got clip={clip}, eps={eps}")
    specs = _split(parameters)
    if not specs:
        return torch.zeros(())
    groups: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    for p, dim in specs:
        groups[(tuple(p.shape), dim, p.dtype, p.device)].append(p)
    clipped, units = [], 0
    for (shape, dim, _, _), params in groups.items():
        grads, k = [p.grad for p in params], len(params)
        n_units = 1 if dim is None else shape[dim]
        w, g = torch.stack(params), torch.stack(grads)  # (k, *shape)
        if dim is not None:  # unit axis to position 1 (a copy only for ConvTranspose's dim 1)
            w, g = w.movedim(dim + 1, 1), g.movedim(dim + 1, 1)
        w_norm = torch.linalg.vector_norm(w.reshape(k, n_units, -1).float(), dim=2).clamp_min_(eps)
        g_norm = torch.linalg.vector_norm(g.reshape(k, n_units, -1).float(), dim=2)
        max_norm = w_norm * clip
        over = g_norm > max_norm
        scale = torch.where(over, max_norm / g_norm.clamp_min(_GRAD_NORM_FLOOR), torch.ones_like(g_norm))
        per_param = (k,) + tuple(n_units if i == dim else 1 for i in range(len(shape)))
        torch._foreach_mul_(grads, list(scale.to(g.dtype).view(per_param).unbind(0)))  # in place
        clipped.append(over.sum())
        units += n_units * k
    return torch.stack(clipped).sum() / units
