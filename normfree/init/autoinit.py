"""AutoInit (Bingham & Miikkulainen, AAAI 2022): analytic, architecture-agnostic initialization.

Walk the network in forward order, propagating each channel's mean and variance analytically
(:mod:`normfree.analysis.moments`), and rescale every weight layer so that its output has unit average
channel variance given the moments it actually receives. The paper draws each weight afresh from
N(0, 1/(fan_in·E[x²])); rescaling the existing draw by one scalar per layer has the same effect for
these zero-mean inits and keeps the seeded weights. Scaled-WS convs re-standardize their weight, so
their per-channel ``gain`` is scaled instead. A weight that is exactly zero (a zero-initialized
classifier, a SkipInit branch gain) is left at zero: that is a deliberate part of the recipe.

A residual add sums the (independent) skip and branch. As the official code (``WrapAddition``), a
network built with ``weighted_sum=True`` (the ``autoinit_*`` models) scales each sum by a fixed
:class:`~normfree.layers.norms.SumScale` that AutoInit sets to 1/std of the sum, so every block's
output has unit variance too. Without it (any other model) a block with an identity shortcut outputs
``var(skip) + 1``: every layer stays at unit variance and the stream grows linearly within a stage
(as an NF-ResNet with α = 1), where plain He init roughly doubles it per block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..analysis.moments import Moments, gaussian_moments, linear_moments
from ..errors import ModelSpecError
from ..layers import AvgPoolSame, GammaAct, ScalarBias, StochasticDepth
from ..layers.norms import SumScale
from ..layers.conv import _ScaledStdConvNd
from ..models.blocks import ResidualBlock
from ..models.net import ResidualNetwork

_PASS_THROUGH = (nn.Identity, nn.Dropout, StochasticDepth)
"""Identity at init and in measurement (eval) mode."""
_POOLS = (nn.AvgPool2d, AvgPoolSame, nn.AdaptiveAvgPool2d)
"""Average pools keep each channel's mean; the variance is kept too (an upper bound: neighbouring
positions are correlated, so averaging removes little of it)."""

_SUPPORTED = (ResidualNetwork, ResidualBlock, nn.Sequential, nn.Conv2d, nn.Linear, GammaAct, ScalarBias, SumScale,
              *_PASS_THROUGH, *_POOLS)


@dataclass
class AutoInitReport:
    """What :func:`autoinit` did: the scale applied to each weight (by parameter name) and the predicted
    moments after the stem and after every residual block, in forward order."""

    scales: dict[str, float] = field(default_factory=dict)
    block_var: list[float] = field(default_factory=list)
    block_sq_mean: list[float] = field(default_factory=list)
    branch_var: list[float] = field(default_factory=list)
    stem_var: float = float("nan")


class _Walker:
    def __init__(self, model: nn.Module, report: AutoInitReport) -> None:
        self.names = {m: n for n, m in model.named_modules()}
        self.report = report

    def fail(self, module: nn.Module, why: str = "") -> ModelSpecError:
        return ModelSpecError(
            f"AutoInit does not support {type(module).__name__} (module {self.names.get(module, '?')!r})"
            f"{': ' + why if why else ''}. Supported: convs, linear layers, Scaled-WS convs, GammaAct "
            "activations, scalar biases, average pools, residual blocks and nn.Sequential chains; "
            "normalization layers, SE and max pools are not")

    def run(self, m: nn.Module, x: Moments) -> Moments:
        if isinstance(m, ResidualNetwork):
            return self.resnet(m, x)
        if isinstance(m, ResidualBlock):
            return self.block(m, x)
        if isinstance(m, nn.Sequential):
            for child in m:
                x = self.run(child, x)
            return x
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return self.weight_layer(m, x)
        if isinstance(m, GammaAct):
            mean, var = gaussian_moments(m.fn, x.mean, x.var)
            return Moments(mean, var).scaled(m.factor)
        if isinstance(m, ScalarBias):
            return Moments(x.mean + float(m.bias.detach()), x.var)
        if isinstance(m, SumScale):
            return self.weighted_sum(m, x)
        if isinstance(m, _PASS_THROUGH + _POOLS):
            return x
        raise self.fail(m)

    def weight_layer(self, m: nn.Conv2d | nn.Linear, x: Moments) -> Moments:
        groups = getattr(m, "groups", 1)
        ws = isinstance(m, _ScaledStdConvNd)
        if ws and m.gain is None:
            raise self.fail(m, "plain weight standardization has no gain to scale")
        with torch.no_grad():
            weight = m.standardized_weight() if ws else m.weight
            out = linear_moments(weight, None, x, groups)
            predicted = out.avg_var
            if predicted > 0:  # zero weights stay zero
                scale = 1.0 / math.sqrt(predicted)
                (m.gain if ws else m.weight).mul_(scale)
                self.report.scales[self.names[m] + (".gain" if ws else ".weight")] = scale
                out = out.scaled(scale)
            if m.bias is not None:
                out = Moments(out.mean + m.bias.detach().double(), out.var)
        return out

    def weighted_sum(self, m: SumScale, x: Moments) -> Moments:
        """The official AutoInit's weighted sum: its coefficient brings the sum back to unit variance."""
        if x.avg_var <= 0:
            return x
        with torch.no_grad():
            m.scale.fill_(1.0 / math.sqrt(x.avg_var))
        self.report.scales[self.names[m] + ".scale"] = float(m.scale)
        return x.scaled(float(m.scale))

    def block(self, b: ResidualBlock, x: Moments) -> Moments:
        pre = self.run(b.preact, x)
        skip = x if b.shortcut is None else self.run(b.shortcut, pre)
        branch = self.run(b.branch, pre)
        self.report.branch_var.append(branch.avg_var)
        gain = b.alpha * (1.0 if b.skip_gain is None else float(b.skip_gain.detach()))
        out = skip + branch.scaled(gain)
        if b.post is not None:
            out = self.run(b.post, out)
        self.report.block_var.append(out.avg_var)
        self.report.block_sq_mean.append(out.avg_sq_mean)
        return out

    def resnet(self, net: ResidualNetwork, x: Moments) -> Moments:
        x = self.run(net.stem, x)
        self.report.stem_var = x.avg_var
        for stage in net.stages:
            x = self.run(stage, x)
        x = self.run(net.final, x)  # global average pool: moments kept (see _POOLS)
        return self.run(net.fc, x)


def _input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
    raise ModelSpecError(f"{type(model).__name__} has no conv or linear layer for AutoInit to initialize")


def autoinit(model: nn.Module, input_moments: Moments | None = None) -> AutoInitReport:
    """Rescale ``model``'s weights in place so that every conv/linear output has unit variance at init.

    Args:
        model: a network of supported layers (see the module docstring); anything else raises
            :class:`~normfree.errors.ModelSpecError` naming the module.
        input_moments: per-channel input moments; default N(0, 1) channels (normalized images).
    Returns the applied scales and the predicted per-block moments, which an SPP of the initialized
    model on Gaussian input should reproduce.
    """
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"AutoInit initializes an nn.Module, got {type(model).__name__}")
    x = input_moments or Moments.standard(_input_channels(model))
    report = AutoInitReport()
    walker = _Walker(model, report)
    for m in model.modules():  # check everything before changing anything
        if not isinstance(m, _SUPPORTED):
            raise walker.fail(m)
    walker.run(model, x)
    return report
