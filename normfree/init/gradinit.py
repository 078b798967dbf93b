"""GradInit (Zhu, Ni, Xu, Kong, Huang & Goldstein, NeurIPS 2021): learn the init scale of every tensor.

Each parameter tensor θᵢ becomes αᵢ·θᵢ⁰ with one learned scalar αᵢ > 0 (start 1, kept ≥ ``min_scale``).
The scales minimize the loss on a batch S₁ *after* one simulated optimizer step from the scaled init,
taken on another batch S₀ with learning rate η::

    min_α  L(S₁; αθ⁰ − η·A[g])        subject to  ‖g‖_p ≤ γ,   g = ∇_θ L(S₀; αθ⁰)

where A is the identity for SGD and the sign-like first Adam step g/(|g| + ε) for Adam (p = 2 for
SGD, 1 for Adam, as the paper). When the bound is violated, the iteration minimizes ‖g‖_p instead,
which pulls the gradient back inside it. The scales themselves are trained with Adam (lr ``lr``).
Any model works: the step is simulated with :func:`torch.func.functional_call`, nothing is
architecture-specific.

Cost, in passes over one batch (recorded in :class:`GradInitResult`): every iteration runs one
forward and one backward with ``create_graph`` for g; inside the bound, one more forward for the
post-step loss; then the backward of the objective runs through both, counted as two backward passes
(a double backward costs about one backward through the gradient graph plus one through the forward).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..checks import POSITIVE, POSITIVE_INT, Domain, check_number
from ..errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
log = logging.getLogger(__name__)


@dataclass
class GradInitResult:
    """The learned scale of every parameter tensor, the per-iteration history and the cost."""

    scales: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    iterations: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    wall_time_s: float = 0.0

    def to_dict(self) -> dict:
        return {"method": "gradinit", "iterations": self.iterations, "forward_passes": self.forward_passes,
                "backward_passes": self.backward_passes, "wall_time_s": self.wall_time_s,
                "scales": self.scales, "history": self.history}


def _lp_norm(grads: Iterable[torch.Tensor], p: int) -> torch.Tensor:
    if p == 1:
        return sum(g.abs().sum() for g in grads)  # type: ignore[return-value]
    return torch.sqrt(sum(g.pow(2).sum() for g in grads))  # type: ignore[arg-type]


def first_step(grads: Iterable[torch.Tensor], optimizer_kind: str, adam_eps: float = 1e-8) -> list[torch.Tensor]:
    """The direction of an optimizer's first step: g for SGD, g/(|g| + ε) for Adam (bias-corrected
    m/√v at step 1 with zero state)."""
    if optimizer_kind == "sgd":
        return list(grads)
    return [g / (g.abs() + adam_eps) for g in grads]


GRADINIT_OPTIMIZERS = ("sgd", "adam")  # the step GradInit simulates
GRADINIT_DOMAINS: dict[str, Domain] = {"iters": POSITIVE_INT, "eta": POSITIVE, "grad_bound": POSITIVE,
                                       "lr": POSITIVE, "min_scale": Domain(low=0, low_open=True, high=1)}


def gradinit(model: nn.Module, data: Iterable[Batch], optimizer_kind: Literal["sgd", "adam"] = "sgd", *,
             iters: int = 100, eta: float | None = None, grad_bound: float = 1.0, lr: float = 1e-2,
             min_scale: float = 1e-2, loss_fn: LossFn | None = None, log_every: int = 10,
             logger: Callable[[str], None] | None = None) -> GradInitResult:
    """Learn one positive scale per parameter tensor of ``model`` and apply it in place.

    Args:
        data: (inputs, labels) batches on the model's device; each iteration takes two (S₀, S₁).
            Iteration stops early, with a log line, when the data runs out.
        optimizer_kind: the optimizer whose first step is simulated: ``"sgd"`` or ``"adam"``.
        iters: GradInit iterations. eta: the simulated step's lr (default 0.1 for SGD, 1e-3 for Adam).
        grad_bound: γ, the bound on ‖g‖_p. lr: Adam lr of the scales. min_scale: lower bound on αᵢ.
        loss_fn: ``loss_fn(logits, labels)``, default cross-entropy.
        logger: called with a progress line every ``log_every`` iterations (default: ``logging``).
    """
    if optimizer_kind not in GRADINIT_OPTIMIZERS:
        raise ConfigError(f"GradInit simulates an 'sgd' or 'adam' step, not {optimizer_kind!r}")
    iters, grad_bound, lr, min_scale = (check_number(f"GradInit {k}", v, GRADINIT_DOMAINS[k]) for k, v in
                                        (("iters", iters), ("grad_bound", grad_bound), ("lr", lr),
                                         ("min_scale", min_scale)))
    if eta is not None:
        eta = check_number("GradInit eta", eta, GRADINIT_DOMAINS["eta"])
    eta = (0.1 if optimizer_kind == "sgd" else 1e-3) if eta is None else eta
    p = 2 if optimizer_kind == "sgd" else 1
    loss_fn = loss_fn or F.cross_entropy
    emit = logger or log.info
    names = [n for n, t in model.named_parameters() if t.requires_grad]
    if not names:
        raise ConfigError("GradInit found no trainable parameters")
    base = {n: t.detach().clone() for n, t in model.named_parameters() if n in names}
    device = next(iter(base.values())).device
    scales = {n: torch.ones((), device=device, requires_grad=True) for n in names}
    opt = torch.optim.Adam(scales.values(), lr=lr)
    result = GradInitResult({})
    start = time.perf_counter()
    batches = iter(data)
    for it in range(iters):
        try:
            (x0, y0), (x1, y1) = next(batches), next(batches)
        except StopIteration:
            emit(f"gradinit: data ran out after {it} iteration(s)")
            break
        params = {n: scales[n] * base[n] for n in names}
        loss0 = loss_fn(functional_call(model, params, (x0,)), y0)
        grads = torch.autograd.grad(loss0, list(params.values()), create_graph=True)
        gnorm = _lp_norm(grads, p)
        result.forward_passes += 1
        result.backward_passes += 1
        inside = bool(gnorm <= grad_bound)
        if inside:
            stepped = {n: params[n] - eta * d for n, d in zip(names, first_step(grads, optimizer_kind))}
            objective = loss_fn(functional_call(model, stepped, (x1,)), y1)
            result.forward_passes += 1
        else:
            objective = gnorm
        opt.zero_grad(set_to_none=True)
        objective.backward()
        result.backward_passes += 2
        opt.step()
        with torch.no_grad():
            for s in scales.values():
                s.clamp_(min=min_scale)
        rec = {"iter": it + 1, "loss0": float(loss0.detach()), "grad_norm": float(gnorm.detach()),
               "inside_bound": inside, "objective": float(objective.detach())}
        if not all(math.isfinite(v) for v in (rec["loss0"], rec["objective"])):
            raise ConfigError(f"GradInit diverged at iteration {it + 1} ({rec}); lower lr or eta")
        result.history.append(rec)
        if (it + 1) % log_every == 0 or it == 0:
            emit(f"gradinit {it + 1}/{iters}: loss {rec['loss0']:.4f}, |g|_{p} {rec['grad_norm']:.4g}"
                 f"{'' if inside else ' (over the bound: shrinking it)'}, objective {rec['objective']:.4f}")
    result.iterations = len(result.history)
    with torch.no_grad():
        for n, t in model.named_parameters():
            if n in scales:
                t.copy_(base[n] * scales[n])
    result.scales = {n: float(s.detach()) for n, s in scales.items()}
    result.wall_time_s = time.perf_counter() - start
    emit(f"gradinit done: {result.iterations} iterations, {result.forward_passes} forward and "
         f"{result.backward_passes} backward passes, {result.wall_time_s:.1f} s")
    return result
