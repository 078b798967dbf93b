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

    Copy-free: one norm per unit-wise tensor (reduced in place over its fan-in axes, any memory
    layout), one multi-tensor ``_foreach_norm`` for all whole-tensor parameters, the clipping rule on
    the concatenated (small) norm vectors, and one ``_foreach_mul_`` to scale the gradients.
    """
    if clip <= 0 or eps < 0:
        raise ValueError(f"clip must be > 0 and eps >= 0, got clip={clip}, eps={eps}")
    specs = _split(parameters)
    if not specs:
        return torch.zeros(())
    specs.sort(key=lambda s: s[1] is not None)  # whole-tensor parameters first
    whole = [p for p, dim in specs if dim is None]
    w_norms, g_norms = [], []
    if whole:
        w_norms.append(torch.stack(torch._foreach_norm([p.detach() for p in whole], 2, dtype=torch.float32)))
        g_norms.append(torch.stack(torch._foreach_norm([p.grad for p in whole], 2, dtype=torch.float32)))
    for p, dim in specs[len(whole):]:
        fan_in = [d for d in range(p.ndim) if d != dim]
        w_norms.append(torch.linalg.vector_norm(p.detach(), dim=fan_in, dtype=torch.float32))
        g_norms.append(torch.linalg.vector_norm(p.grad, dim=fan_in, dtype=torch.float32))
    device = specs[0][0].device
    w_norm = torch.cat([t.to(device) for t in w_norms]).clamp_min_(eps)
    g_norm = torch.cat([t.to(device) for t in g_norms])
    max_norm = w_norm * clip
    over = g_norm > max_norm
    scale = torch.where(over, max_norm / g_norm.clamp_min(_GRAD_NORM_FLOOR), torch.ones_like(g_norm))
    sizes = [1] * len(whole) + [p.shape[dim] for p, dim in specs[len(whole):]]
    grads, factors = [], []
    for (p, dim), f in zip(specs, scale.split(sizes)):
        shape = [1] * p.ndim
        if dim is not None:
            shape[dim] = p.shape[dim]
        grads.append(p.grad)
        factors.append(f.to(device=p.grad.device, dtype=p.grad.dtype).view(shape))
    torch._foreach_mul_(grads, factors)  # in place
    return over.sum() / over.numel()
