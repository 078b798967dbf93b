"""Normalization layers of the baselines NF-ResNets are compared against.

Each is built as ``cls(channels, **options)`` through :data:`~normfree.layers.NORMS`:

- :class:`BatchNorm2d`: ``nn.BatchNorm2d`` whose scale starts at ``scale_init`` (1 normally; Davis &
  Frank's "revisited" BN starts it below 1, their code's default 0.1).
- :class:`GroupNorm2d`: GroupNorm (Wu & He), 32 groups where the width allows.
- :class:`EvoNormB0` / :class:`EvoNormS0` (Liu et al. 2020): normalization *and* activation in one
  layer (``fused_act = True``), B0 batch-dependent with running statistics, S0 batch-independent.

Also the two small pieces of other baselines: :func:`input_batch_norm` (revisited BN's online
normalization of raw images), :class:`ScalarBias` (Fixup's scalar biases) and :class:`SumScale`
(AutoInit's weighted residual sum).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelSpecError

Device = torch.device | str | None

SIGMA_ACT = 0.58
"""Davis & Frank's σ_act: the input-normalization BN scale is ``SIGMA_ACT × BN scale init``."""


def fit_groups(channels: int, groups: int) -> int:
    """The largest group count ≤ ``groups`` that divides ``channels`` (tiny test widths need fewer)."""
    if channels < 1 or groups < 1:
        raise ModelSpecError(f"channels and groups must be positive, got {channels} and {groups}")
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with its scale initialized to ``scale_init`` (revisited BN uses 0.1)."""

    def __init__(self, num_features: int, scale_init: float = 1.0, eps: float = 1e-5,
                 momentum: float = 0.1, device: Device = None, dtype: torch.dtype | None = None) -> None:
        if scale_init <= 0:
            raise ModelSpecError(f"scale_init must be positive, got {scale_init}")
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.scale_init = float(scale_init)
        nn.init.constant_(self.weight, scale_init)

    def reset_parameters(self) -> None:
        """As ``nn.BatchNorm2d``, then the scale at ``scale_init`` (called by ``nn.BatchNorm2d``'s
        constructor too, before ``scale_init`` is set: ``__init__`` sets the scale itself)."""
        super().reset_parameters()
        if hasattr(self, "scale_init"):
            nn.init.constant_(self.weight, self.scale_init)


def input_batch_norm(channels: int, scale_init: float = 1.0, device: Device = None,
                     dtype: torch.dtype | None = None) -> BatchNorm2d:
    """Revisited BN's input layer: a BN on the raw [0, 1] images instead of a fixed dataset mean/std.

    As ``osu-cvl/revisiting-bn-init`` ``construct_network(input_norm='bn')``: its scale starts at
    ``SIGMA_ACT × scale_init`` and its shift is frozen at 0 (only the scale learns).
    """
    bn = BatchNorm2d(channels, scale_init=SIGMA_ACT * scale_init, device=device, dtype=dtype)
    bn.bias.requires_grad_(False)
    return bn


class GroupNorm2d(nn.GroupNorm):
    """GroupNorm with ``groups`` (32, as Wu & He) reduced to a divisor of the width when needed."""

    def __init__(self, num_channels: int, groups: int = 32, eps: float = 1e-5, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(fit_groups(num_channels, groups), num_channels, eps=eps, device=device, dtype=dtype)


def _param(channels: int, device: Device, dtype: torch.dtype | None) -> nn.Parameter:
    return nn.Parameter(torch.empty(1, channels, 1, 1, device=device, dtype=dtype))


def _reset_evonorm(m: EvoNormB0 | EvoNormS0) -> None:
    """EvoNorm's initialization: unit scale and v, zero shift."""
    nn.init.ones_(m.weight)
    nn.init.zeros_(m.bias)
    nn.init.ones_(m.v)


class EvoNormB0(nn.Module):
    """EvoNorm-B0: ``x / max(sqrt(s²_NHW(x) + ε), v·x + sqrt(s²_HW(x) + ε)) · γ + β``.

    Batch-dependent like BN: the batch variance (no mean subtraction) is tracked as a running average
    (momentum 0.1, unbiased, as ``nn.BatchNorm2d``) and used instead of the batch's in eval mode.
    Formula and defaults as timm ``EvoNorm2dB0`` (ε = 1e-3 in both square roots).
    """

    fused_act = True

    def __init__(self, channels: int, eps: float = 1e-3, momentum: float = 0.1, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight, self.bias, self.v = (_param(channels, device, dtype) for _ in range(3))
        self.register_buffer("running_var", torch.ones(1, channels, 1, 1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_evonorm(self)
        self.running_var.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
            with torch.no_grad():
                n = x.numel() / x.shape[1]
                self.running_var.lerp_(var * (n / max(n - 1, 1)), self.momentum)
        else:
            var = self.running_var
        instance_std = (x.var(dim=(2, 3), unbiased=False, keepdim=True) + self.eps).sqrt()
        denom = torch.maximum((var + self.eps).sqrt(), x * self.v + instance_std)
        return x / denom * self.weight + self.bias


class EvoNormS0(nn.Module):
    """EvoNorm-S0: ``x · σ(v·x) / sqrt(s²_{H,W,C/g}(x) + ε) · γ + β``, per example (batch-independent).

    Swish over a group std; 32 groups (reduced to a divisor of the width) and ε = 1e-5 as timm.
    """

    fused_act = True

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-5, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.groups, self.eps = fit_groups(channels, groups), eps
        self.weight, self.bias, self.v = (_param(channels, device, dtype) for _ in range(3))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_evonorm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        grouped = x.reshape(n, self.groups, -1)
        std = (grouped.var(dim=2, unbiased=False, keepdim=True) + self.eps).sqrt()
        std = std.expand(n, self.groups, c // self.groups * h * w).reshape(x.shape)
        return x * torch.sigmoid(x * self.v) / std * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"groups={self.groups}, eps={self.eps:g}"


class ScalarBias(nn.Module):
    """``x + b`` with one learnable scalar ``b`` (init 0): Fixup's bias before convs and activations."""

    def __init__(self, device: Device = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros((), device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class SumScale(nn.Module):
    """``x · c`` with a fixed scalar ``c`` (a buffer, so checkpoints keep it; 1 until set): AutoInit's
    weighted residual sum, whose coefficient :func:`normfree.init.autoinit` sets to give unit variance."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
