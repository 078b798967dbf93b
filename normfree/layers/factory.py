"""How a network makes its layers: normalizer-free or normalized, from one description.

Every family is written once against a :class:`LayerFactory`; switching the factory turns an NF-ResNet
into its BatchNorm twin (same topology, BN→ReLU pre-activation as the official baseline) or into an
NF-ResNet with plain convolutions (to show the mean shift that Scaled WS removes), or into one of the
baselines of :mod:`normfree.layers.norms` (ReLU→BN, GroupNorm + WS, EvoNorm, Fixup).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import nn

from ..errors import ModelSpecError
from .activations import GammaAct, get_gamma
from .conv import HeConv2d, Padding, ScaledStdConv2d
from .norms import BatchNorm2d, EvoNormB0, EvoNormS0, GroupNorm2d, ScalarBias, SumScale
from .proxynorm import GroupProxyNormAct, LayerNorm2d, LayerProxyNormAct

NORMS: dict[str, Callable[..., nn.Module]] = {
    "bn": BatchNorm2d, "gn": GroupNorm2d, "evonorm_b0": EvoNormB0, "evonorm_s0": EvoNormS0,
    "layernorm": LayerNorm2d, "ln_pn": LayerProxyNormAct, "gn_pn": GroupProxyNormAct,
}
"""Normalization layers selectable by name; each is constructed as ``cls(channels, **norm_kwargs)``.
Those with ``fused_act = True`` (EvoNorms, Proxy Norms) include the nonlinearity and replace ``norm → act``."""

NormOrder = Literal["norm_act", "act_norm"]


@dataclass(frozen=True)
class LayerFactory:
    """Layer recipe shared by all families.

    Args:
        act: activation name (see :func:`~normfree.layers.activation_names`).
        norm: ``None`` for normalizer-free, or a key of :data:`NORMS` for a normalized twin.
        std_conv: Scaled Weight Standardization (True) or plain He-initialized convs (False). With plain
            convs He init (weight variance 2/fan_in) supplies the variance-preserving gain, so the
            activation carries no γ.
        ws: ``"official"`` (γ in the activation), ``"timm"`` (γ folded into every conv, var + eps) or
            ``"plain"`` (Qiao et al. WS, no gain; only before a normalization layer).
        padding: ``"same"`` (TensorFlow, as the official code) or ``"symmetric"``.
        norm_order: ``"norm_act"`` (BN→ReLU, the official baseline) or ``"act_norm"`` (ReLU→BN).
        norm_kwargs: options of the norm layer, e.g. ``{"scale_init": 0.1}`` or ``{"groups": 16}``.
        fixup: Fixup's post-activation layers (normalizer-free, plain bias-free convs): a scalar bias
            before every conv and activation, the activation moved after the residual sum.
        gamma_in_act: with ``ws="timm"``, keep γ in the activations instead of the convs (timm's
            ``dm_nfnet_*`` models); official WS always has it there.
        device / dtype: where and in which dtype every layer's parameters are created (PyTorch's
            factory kwargs; ``device="meta"`` builds a network without allocating its weights).
        weighted_sum: a fixed :class:`~normfree.layers.norms.SumScale` after every residual sum (and
            the stem), set by AutoInit to keep the residual stream at unit variance.
    """

    act: str = "relu"
    norm: str | None = None
    std_conv: bool = True
    ws: Literal["official", "timm", "plain"] = "official"
    padding: Padding = "same"
    norm_order: NormOrder = "norm_act"
    norm_kwargs: dict[str, Any] = field(default_factory=dict)
    fixup: bool = False
    gamma_in_act: bool = False
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    weighted_sum: bool = False

    def __post_init__(self) -> None:
        get_gamma(self.act)  # validates the name
        if self.norm is not None and self.norm not in NORMS:
            raise ModelSpecError(f"unknown norm {self.norm!r}; choose one of {sorted(NORMS)} or None")
        if self.norm_order not in ("norm_act", "act_norm"):
            raise ModelSpecError(f"norm_order must be 'norm_act' or 'act_norm', got {self.norm_order!r}")
        if self.norm is None and (self.norm_kwargs or self.norm_order != "norm_act"):
            raise ModelSpecError("norm_kwargs / norm_order given without a norm")
        if self.std_conv and self.ws == "plain" and self.normalizer_free:
            raise ModelSpecError("plain weight standardization needs a normalization layer after it")
        if self.fused_act and (self.act != "relu" or self.norm_order != "norm_act"):
            raise ModelSpecError(f"{self.norm} includes its own nonlinearity: leave act='relu' and "
                             "norm_order='norm_act'")
        if self.fixup and (self.norm is not None or self.std_conv):
            raise ModelSpecError("Fixup is normalizer-free with plain convs: norm=None, std_conv=False")
        if self.weighted_sum and (self.fixup or not self.normalizer_free):
            raise ModelSpecError("the weighted residual sum is for normalizer-free nets without Fixup")

    @property
    def fused_act(self) -> bool:
        """True for norm layers that include the activation (EvoNorm)."""
        return self.norm is not None and getattr(NORMS[self.norm], "fused_act", False)

    @property
    def factory_kwargs(self) -> dict[str, Any]:
        """``{"device": ..., "dtype": ...}`` for layers built outside the factory."""
        return {"device": self.device, "dtype": self.dtype}

    @property
    def normalizer_free(self) -> bool:
        return self.norm is None

    @property
    def act_gamma(self) -> float:
        """γ applied inside activations: NF nets with official Scaled WS (or ``gamma_in_act``)."""
        if self.normalizer_free and self.std_conv and (self.ws == "official" or self.gamma_in_act):
            return get_gamma(self.act)
        return 1.0

    @property
    def se_gain(self) -> float:
        """NF nets double the SE output to undo the sigmoid's 0.5 mean; the BN baselines do not."""
        return 2.0 if self.normalizer_free else 1.0

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Module:
        if self.std_conv:
            gamma = get_gamma(self.act) if self.ws == "timm" and not self.gamma_in_act else 1.0
            return ScaledStdConv2d(cin, cout, kernel, stride, padding=self.padding, groups=groups,
                                   ws=self.ws, gamma=gamma, bias=self.ws != "plain", **self.factory_kwargs)
        return HeConv2d(cin, cout, kernel, stride, groups, padding=self.padding,
                        bias=self.normalizer_free and not self.fixup, **self.factory_kwargs)

    def act_layer(self, channels: int, scale: float = 1.0) -> nn.Module:
        """The activation between convs; for normalized nets ``norm → act`` (the official order),
        ``act → norm`` or a fused EvoNorm; for Fixup ``bias → act → bias``."""
        act = GammaAct(self.act, gamma=self.act_gamma, scale=scale)
        if self.normalizer_free and not self.fixup:
            return act
        if scale != 1.0:
            raise ModelSpecError("only a normalizer-free network with α/β scales its block inputs")
        if self.fixup:
            return nn.Sequential(OrderedDict(bias_in=self.scalar_bias(), act=act, bias_out=self.scalar_bias()))
        norm = NORMS[self.norm](channels, **self.norm_kwargs, **self.factory_kwargs)  # type: ignore[index]
        if self.fused_act:
            return norm
        return nn.Sequential(norm, act) if self.norm_order == "norm_act" else nn.Sequential(act, norm)

    def preact_layer(self, channels: int, scale: float = 1.0) -> nn.Module:
        """What a residual block applies to its input first: the activation (with β) in pre-activation
        nets; Fixup's input has been activated already, so only its scalar bias."""
        return self.scalar_bias() if self.fixup else self.act_layer(channels, scale)

    def post_layer(self) -> nn.Module | None:
        """Applied after the residual sum (and after the stem conv): Fixup's ``bias → act``, or the
        weighted sum's scale."""
        if self.weighted_sum:
            return SumScale()
        if not self.fixup:
            return None
        return nn.Sequential(OrderedDict(bias=self.scalar_bias(), act=GammaAct(self.act, gamma=1.0)))

    def final_layer(self, channels: int) -> nn.Module:
        """Before the global pool: the activation (pre-activation nets) or Fixup's classifier bias."""
        return self.scalar_bias() if self.fixup else self.act_layer(channels)

    def scalar_bias(self) -> ScalarBias:
        return ScalarBias(**self.factory_kwargs)
