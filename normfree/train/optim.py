"""Optimizer parameter groups, the warmup + cosine schedule, and the EMA of weights."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models.net import decay_exempt as no_weight_decay  # the model's rule, under the trainer's name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two SGD groups: decayed weights and non-decayed gains/biases (empty groups dropped)."""
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_weight_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


PARAM_GROUP_KINDS = ("default", "fixup", "revisited_bn", "auto")
PARAM_ROLES = ("skip_gain", "gain", "bias", "weight")


def param_role(name: str, param: torch.Tensor) -> str:
    """What a parameter does, for per-role learning rates: ``skip_gain`` (a residual branch's scalar
    gain), ``gain`` (Scaled-WS conv gains, SE gains, 1-D norm weights), ``bias`` or ``weight``."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "skip_gain":
        return "skip_gain"
    if "bias" in leaf:
        return "bias"
    if "gain" in leaf or (leaf == "weight" and param.ndim <= 1):
        return "gain"
    return "weight"


def _split_by_role(model: nn.Module, groups: list[dict], role_lr_scale: dict[str, float]) -> list[dict]:
    """Each group split into one group per parameter role whose lr is multiplied by that role's scale."""
    roles = {id(p): param_role(n, p) for n, p in model.named_parameters()}
    out = []
    for g in groups:
        for role in PARAM_ROLES:
            params = [p for p in g["params"] if roles.get(id(p), "weight") == role]
            if params:
                out.append({**g, "params": params, "role": role,
                            "lr_scale": g["lr_scale"] * role_lr_scale.get(role, 1.0)})
    return out


def build_param_groups(model: nn.Module, kind: str, lr: float, weight_decay: float,
                       role_lr_scale: dict[str, float] | None = None) -> list[dict]:
    """The SGD groups of ``kind``, each with an ``lr_scale`` (its lr relative to the peak lr).

    ``default`` is :func:`param_groups`; ``fixup`` / ``revisited_bn`` are the groups those papers
    prescribe (scalars at lr/10; BN scales at lr/100, see normfree.models.baselines); ``auto`` picks
    the one the model's registered baseline prescribes (``fixup_*``, ``revbn_*``), else ``default``.
    The schedule multiplies its lr by ``lr_scale``, so the ratios hold through warmup and decay.
    ``role_lr_scale`` (e.g. ``{"skip_gain": 10}``) further multiplies the lr of the parameters of each
    :func:`param_role`; roles it does not name keep their group's lr.
    """
    from ..models.baselines import BASELINES, fixup_param_groups, revisited_bn_param_groups

    if kind == "auto":
        baseline = BASELINES.get(getattr(model, "model_name", "").split("_", 1)[0])
        kind = baseline.param_groups if baseline else "default"
    builders = {"default": lambda m, lr, wd: param_groups(m, wd), "fixup": fixup_param_groups,
                "revisited_bn": revisited_bn_param_groups}
    if kind not in builders:
        raise ValueError(f"unknown param_groups {kind!r}; choose from {', '.join(PARAM_GROUP_KINDS)}")
    groups = builders[kind](model, lr, weight_decay)
    for g in groups:
        g["lr_scale"] = g.get("lr", lr) / lr
        g["kind"] = kind
    if role_lr_scale and any(v != 1.0 for v in role_lr_scale.values()):
        groups = _split_by_role(model, groups, role_lr_scale)
    return groups


def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Official ``WarmupCosineDecay``: linear 0 → peak over the warmup, then cosine to ``min_lr``."""
    if step < warmup_steps:
        return peak * step / warmup_steps  # official: starts at exactly 0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * progress))


class ModelEMA:
    """Exponential moving average of parameters and buffers with the official (``tf1_ema``) warm-up
    ``d = min(decay, (1 + step) / (10 + step))``, kept in fp32."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                      for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        current = model.state_dict()
        floats = [k for k, v in self.state.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.state[k] for k in floats], [current[k].float() for k in floats], 1 - d)
        for k, v in self.state.items():
            if not v.is_floating_point():
                v.copy_(current[k])

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.state)
