"""The baselines NF-ResNets are compared against, as options of the one ResNet builder.

Every baseline is registered at every ResNet size the NF-ResNet has (``<prefix>_resnet50``,
``<prefix>_cifar_resnet56``, ``<prefix>_wrn16_4``, ...) with the NF net's conv topology (conv names,
shapes and strides). Only layers between the convs, the residual sum and the initialization differ.
This module also holds what the baselines need beyond the network: Fixup's initialization and the
optimizer parameter groups of Fixup and of revisited BN. See docs/baselines.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import ConfigError, ModelSpecError
from .net import ResidualNetwork

_RECIPE: dict[str, Any] = {"stochdepth_rate": 0.0, "fc_init_std": 0.0}
BASE_DEFAULTS: dict[str, Any] = {"std_conv": False, **_RECIPE}
"""As the official BN baseline (``bn_*``): plain He-initialized convs, no stochastic depth, zero fc."""
_GN8: dict[str, Any] = {**BASE_DEFAULTS, "norm_kwargs": {"groups": 8}}
"""Proxy Norm's GN: 8 groups, so CIFAR widths (16–64) keep 2–8 channels per group (32 would be instance norm)."""
_PLAIN: dict[str, Any] = {"alpha": None, "std_conv": False, "skipinit_gain": None}
"""A plain BN-free ResNet: He-initialized convs, ``h + f(act(h))`` with no α, β or skip gain."""


@dataclass(frozen=True)
class Baseline:
    """A registered baseline: the builder arguments that define it and its overridable defaults."""

    label: str
    fixed: dict[str, Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    param_groups: str = "default"  # the optimizer groups its paper prescribes (TrainConfig.param_groups)
    init: str = "default"  # the initialization the trainer applies (TrainConfig.init "auto", normfree.init)


BASELINES: dict[str, Baseline] = {
    "relubn": Baseline("pre-activation ReLU→BN", {"norm": "bn", "norm_order": "act_norm"},
                       BASE_DEFAULTS),
    "revbn": Baseline("revisited BN (scale init 0.1, BN on the input)", {"norm": "bn"},
                      {**BASE_DEFAULTS, "norm_kwargs": {"scale_init": 0.1}, "input_norm": True}, "revisited_bn"),
    "gnws": Baseline("GroupNorm + WS", {"norm": "gn", "std_conv": True, "ws": "plain"}, _RECIPE),
    "evob0": Baseline("EvoNorm-B0", {"norm": "evonorm_b0"}, BASE_DEFAULTS),
    "evos0": Baseline("EvoNorm-S0", {"norm": "evonorm_s0"}, BASE_DEFAULTS),
    "fixup": Baseline("Fixup", {"fixup": True, "alpha": None, "std_conv": False},
                      {**_RECIPE, "skipinit_gain": 1.0}, "fixup"),
    "skipinit": Baseline("SkipInit", {"alpha": None, "std_conv": False},
                         {**_RECIPE, "skipinit_gain": 0.0}),
    "lnpn": Baseline("LayerNorm + Proxy Norm", {"norm": "ln_pn"}, BASE_DEFAULTS),
    "gnpn": Baseline("GroupNorm + Proxy Norm", {"norm": "gn_pn"}, _GN8),
    "ln": Baseline("LayerNorm (Proxy Norm ablation)", {"norm": "layernorm"}, BASE_DEFAULTS),
    "gn": Baseline("GroupNorm (Proxy Norm ablation)", {"norm": "gn"}, _GN8),
    "gradinit": Baseline("GradInit on a plain BN-free net", _PLAIN, _RECIPE, init="gradinit"),
    "autoinit": Baseline("AutoInit on a plain BN-free net", {**_PLAIN, "weighted_sum": True}, _RECIPE,
                         init="autoinit"),
}
"""Registered-name prefix → baseline (``bn_*``, BN→ReLU, is registered with the NF nets)."""


def _he_fan_out_std(conv: nn.Conv2d) -> float:
    k = conv.weight.shape[2] * conv.weight.shape[3]
    return math.sqrt(2.0 / (conv.out_channels * k))


def fixup_init(model: ResidualNetwork) -> None:
    """Fixup's initialization, as ``hongyi-zhang/Fixup`` (``fixup_resnet_imagenet.py``).

    In every residual branch of m convs: the last conv is zero, the others are He (fan-out) normal
    scaled by L^(−1/(2m−2)), L = number of branches (L^(−1/2) for basic, L^(−1/4) for bottleneck
    blocks). Projection shortcuts are He (fan-out) normal, unscaled; the classifier is zero. The
    stem keeps PyTorch's default conv init, which the official code does not touch either.
    """
    blocks = model.blocks()
    for block in blocks:
        convs = [m for m in block.branch.modules() if isinstance(m, nn.Conv2d)]
        if len(convs) < 2:
            raise ModelSpecError("Fixup needs at least two convs per residual branch")
        scale = len(blocks) ** (-1.0 / (2 * len(convs) - 2))
        for conv in convs[:-1]:
            nn.init.normal_(conv.weight, 0.0, _he_fan_out_std(conv) * scale)
        nn.init.zeros_(convs[-1].weight)
        if block.shortcut is not None:
            for conv in (m for m in block.shortcut.modules() if isinstance(m, nn.Conv2d)):
                nn.init.normal_(conv.weight, 0.0, _he_fan_out_std(conv))
    nn.Conv2d.reset_parameters(model.stem.conv)  # PyTorch's default, not the He init of HeConv2d
    nn.init.zeros_(model.fc.weight)
    nn.init.zeros_(model.fc.bias)


ParamGroups = list[dict[str, Any]]


def fixup_param_groups(model: nn.Module, lr: float, weight_decay: float = 1e-4,
                       scalar_lr_ratio: float = 0.1) -> ParamGroups:
    """Optimizer groups for Fixup: scalar biases, branch multipliers (``skip_gain``) and the
    classifier bias at ``lr · scalar_lr_ratio`` (1/10 in the official ``cifar_train.py``, which
    selects parameters named ``bias``/``scale``); weight decay on every parameter, as there."""
    scalars: list[nn.Parameter] = []
    others: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (scalars if name.endswith(("bias", "skip_gain")) else others).append(p)
    return _nonempty([{"params": others, "weight_decay": weight_decay},
                      {"params": scalars, "weight_decay": weight_decay, "lr": lr * scalar_lr_ratio}])


def revisited_bn_param_groups(model: nn.Module, lr: float, weight_decay: float = 1e-4,
                              c: float = 100.0) -> ParamGroups:
    """Optimizer groups of Davis & Frank (``weight_decay_and_learning_rate.py``): BN scales at
    ``lr / c`` (c = 100 in their paper and script) with no weight decay, other 1-D parameters
    (biases, BN shifts) with no weight decay, conv and linear weights with ``weight_decay``."""
    if c < 1:
        raise ConfigError(f"c divides the BN-scale learning rate and must be >= 1, got {c}")
    bn_scales = {id(m.weight) for m in model.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None}
    scales: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (scales if id(p) in bn_scales else no_decay if p.ndim <= 1 else decay).append(p)
    return _nonempty([{"params": decay, "weight_decay": weight_decay},
                      {"params": no_decay, "weight_decay": 0.0},
                      {"params": scales, "weight_decay": 0.0, "lr": lr / c}])


def _nonempty(groups: ParamGroups) -> ParamGroups:
    return [g for g in groups if g["params"]]
