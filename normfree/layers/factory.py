"""How a network makes its layers: normalizer-free or normalized, from one description.

Every family is written once against a :class:`LayerFactory`; switching the factory turns an NF-ResNet
into its BatchNorm twin (same topology, BN→ReLU pre-activation as the official baseline) or into an
NF-ResNet with plain convolutions (to show the mean shift that Scaled WS removes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from .activations import GammaAct, get_gamma
from .conv import Padding, ScaledStdConv2d, conv2d

NORMS: dict[str, type[nn.Module]] = {"bn": nn.BatchNorm2d}
"""Normalization layers selectable by name; each is constructed as ``cls(channels)``."""


@dataclass(frozen=True)
class LayerFactory:
    """Layer recipe shared by all families.

    Args:
        act: activation name (see :func:`~normfree.layers.activation_names`).
        norm: ``None`` for normalizer-free, or a key of :data:`NORMS` for a normalized twin.
        std_conv: Scaled Weight Standardization (True) or plain He-initialized convs (False). With plain
            convs He init (weight variance 2/fan_in) supplies the variance-preserving gain, so the
            activation carries no γ.
        ws: ``"official"`` (γ in the activation) or ``"timm"`` (γ folded into every conv, var + eps).
        padding: ``"same"`` (TensorFlow, as the official code) or ``"symmetric"``.
        gamma_in_act: with ``ws="timm"``, keep γ in the activations instead of the convs (timm's
            ``dm_nfnet_*`` models); official WS always has it there.
    """

    act: str = "relu"
    norm: str | None = None
    std_conv: bool = True
    ws: Literal["official", "timm"] = "official"
    padding: Padding = "same"
    gamma_in_act: bool = False

    def __post_init__(self) -> None:
        get_gamma(self.act)  # validates the name
        if self.norm is not None and self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {sorted(NORMS)} or None")

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
                                   ws=self.ws, gamma=gamma)
        return conv2d(cin, cout, kernel, stride, groups, padding=self.padding, bias=self.normalizer_free)

    def act_layer(self, channels: int, scale: float = 1.0) -> nn.Module:
        """The activation between convs; for normalized nets ``norm → act`` (the official order)."""
        act = GammaAct(self.act, gamma=self.act_gamma, scale=scale)
        if self.normalizer_free:
            return act
        if scale != 1.0:
            raise ValueError("a normalized network has no β input scaling")
        return nn.Sequential(NORMS[self.norm](channels), act)  # type: ignore[index]
