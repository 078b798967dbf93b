"""Proxy Normalization (Labatie, Masters, Eaton-Rosen & Luschi, NeurIPS 2022), batch-independent.

LayerNorm or GroupNorm alone leaves every channel's post-activation distribution free to drift from
zero mean and unit variance (the normalization is per example, over many channels at once), which is
what BatchNorm's per-channel statistics prevent. Proxy Norm restores that without looking at the batch:
after ``y = γ·norm(x) + β`` and the activation ``φ``, each channel is standardized with the mean and
variance of ``φ(γ_c·Y + β_c)`` for a *proxy* ``Y ~ N(0, 1)``, i.e. of what the channel would be if the
normalized pre-activation were exactly Gaussian, then an extra learned affine ``γ̃, β̃`` follows.

As the official Graphcore code (``proxy_norm_act``): the proxy is ``n_samples`` evenly spaced
quantiles of N(0, 1), ``sqrt(2)·erfinv(2(i + ½)/n − 1)``, and the standardization adds ``proxy_eps``
(0.03) to the proxy variance. The layers include the activation (``fused_act = True``, as EvoNorm), so
a :class:`~normfree.layers.LayerFactory` uses them in place of ``norm → act``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .activations import get_activation
from .norms import fit_groups


def gaussian_quantiles(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` evenly spaced quantiles of N(0, 1): the deterministic proxy sample of the paper's code."""
    if n < 2:
        raise ValueError(f"the proxy needs at least 2 samples, got {n}")
    u = (torch.arange(n, dtype=torch.float64) + 0.5) * (2.0 / n) - 1.0
    return (torch.erfinv(u) * 2.0**0.5).to(dtype)


def _channel_param(channels: int, value: float, **factory: Any) -> nn.Parameter:
    return nn.Parameter(torch.full((channels,), value, **factory))


class LayerNorm2d(nn.GroupNorm):
    """LayerNorm of a conv feature map: one group over (C, H, W) per example, per-channel affine."""

    def __init__(self, num_channels: int, eps: float = 1e-5, device: Any = None, dtype: Any = None) -> None:
        super().__init__(1, num_channels, eps=eps, device=device, dtype=dtype)


class ProxyNormAct(nn.Module):
    """``γ̃ · (φ(y) − E[φ(γY + β)]) / sqrt(Var[φ(γY + β)] + ε̃) + β̃`` with ``y = γ·GN(x) + β``.

    Args:
        channels: number of channels.
        groups: normalization groups (1 = LayerNorm; reduced to a divisor of ``channels``).
        act: activation name (see :func:`~normfree.layers.activation_names`).
        eps: the group normalization's ε. proxy_eps: ε̃ added to the proxy variance (0.03 officially).
        n_samples: size of the proxy sample (quantiles of N(0, 1)).
    Every statistic is per example or a function of parameters only, so an example's output never
    depends on the rest of its batch.
    """

    fused_act = True

    def __init__(self, channels: int, groups: int = 1, act: str = "relu", eps: float = 1e-5,
                 proxy_eps: float = 0.03, n_samples: int = 256, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if proxy_eps < 0:
            raise ValueError(f"proxy_eps must be >= 0, got {proxy_eps}")
        self.groups, self.eps, self.proxy_eps = fit_groups(channels, groups), eps, proxy_eps
        self.act_name = act
        self.fn = get_activation(act)[0]
        self.weight, self.bias = _channel_param(channels, 1.0, **factory), _channel_param(channels, 0.0, **factory)
        self.tilde_weight = _channel_param(channels, 1.0, **factory)
        self.tilde_bias = _channel_param(channels, 0.0, **factory)
        proxy = gaussian_quantiles(n_samples, dtype or torch.get_default_dtype())  # float64 layers: a float64 proxy
        self.register_buffer("proxy", proxy.to(device=device), persistent=False)

    def proxy_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (biased) variance of ``φ(γ_c·Y + β_c)`` over the proxy sample."""
        z = self.fn(self.weight[:, None] * self.proxy.to(self.weight.dtype) + self.bias[:, None])
        return z.mean(dim=1), z.var(dim=1, unbiased=False)

    def pre_standardization(self, x: torch.Tensor) -> torch.Tensor:
        """``φ(γ·GN(x) + β)``: the post-activation signal that the proxy standardizes."""
        y = F.group_norm(x, self.groups, self.weight, self.bias, self.eps)
        return self.fn(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pre_standardization(x)
        mean, var = self.proxy_moments()
        scale = self.tilde_weight * torch.rsqrt(var + self.proxy_eps)
        shift = self.tilde_bias - mean * scale
        return torch.addcmul(shift.view(1, -1, 1, 1).to(z.dtype), z, scale.view(1, -1, 1, 1).to(z.dtype))

    def extra_repr(self) -> str:
        return (f"groups={self.groups}, act={self.act_name}, eps={self.eps:g}, proxy_eps={self.proxy_eps:g}, "
                f"n_samples={self.proxy.numel()}")


class LayerProxyNormAct(ProxyNormAct):
    """LN + Proxy Norm (one group)."""

    def __init__(self, channels: int, act: str = "relu", eps: float = 1e-5, proxy_eps: float = 0.03,
                 n_samples: int = 256, device: Any = None, dtype: Any = None) -> None:
        super().__init__(channels, 1, act, eps, proxy_eps, n_samples, device, dtype)


class GroupProxyNormAct(ProxyNormAct):
    """GN + Proxy Norm (32 groups where the width allows, as :class:`~normfree.layers.GroupNorm2d`)."""

    def __init__(self, channels: int, groups: int = 32, act: str = "relu", eps: float = 1e-5,
                 proxy_eps: float = 0.03, n_samples: int = 256, device: Any = None, dtype: Any = None) -> None:
        super().__init__(channels, groups, act, eps, proxy_eps, n_samples, device, dtype)
