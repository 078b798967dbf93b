"""CIFAR-10 speedrun networks: the airbench94 BatchNorm net and a normalizer-free net of the same topology.

Both are the airbench94 layout (Jordan 2024): a frozen 2×2 patch-whitening conv (24 filters: the
eigenvectors of the training-patch second-moment matrix scaled by 1/√(λ + ε), and their negatives),
GELU, three conv groups ``conv3×3 → max-pool 2 → [BN] → GELU → conv3×3 → [BN] → GELU`` of widths
64/256/256, a 3×3 max-pool, a bias-free linear classifier and a fixed logit scale of 1/9.

``bn_cifar_airbench94`` uses airbench's BatchNorm: ε = 1e-12, running-average momentum 0.6 (PyTorch
``momentum=0.4``), scale frozen at 1, trainable shift; plain bias-free convs with a Dirac init in the
first ``in_channels`` filters.

``nf_cifar_speedrun`` has no normalization layer and no batch statistic in training or inference.
Each BN is removed and its job is done as follows:

* Scaled Weight Standardization convs (:class:`~normfree.layers.ScaledStdConv2d`): zero-mean filters
  remove the mean shift that GELU outputs carry, and unit-norm filters keep the variance.
* γ-scaled GELU (:class:`~normfree.layers.GammaAct`): unit variance out for unit-variance input.
* A one-batch data-dependent init (:meth:`SpeedrunNet.init_from_data`, the ``data_init`` step of the
  recipe, its forward pass counted in the training FLOPs): each conv's per-channel WS gain and bias
  are set once so that its pre-activation (after the max-pool, for the first conv of a group) has zero
  mean and unit variance on one batch of training images. The max-pool is what breaks a data-independent
  init: it raises the mean (≈ +1σ for a 2×2 window) and shrinks the variance, and nothing after it
  would undo that. A positive per-channel affine commutes with max-pool, so the correction can live in
  the conv. After this step the gains and biases are ordinary trainable parameters.
* The WS biases take BN's shift role (and its 64× learning rate in the recipe).

The allowed data-dependent parts are therefore the frozen whitening conv and the one-batch init,
both computed once before training. SPPs of both nets: docs/speedrun.md.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelSpecError
from ..layers import GammaAct, ScaledStdConv2d


def patch_second_moment(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """E[p pᵀ] over every k×k patch p (flattened channel-major, like a conv filter) of NCHW images.

    Uncentered, as airbench: the images are already standardized per channel."""
    patches = F.unfold(images.double(), kernel_size)  # (N, C·k·k, L)
    flat = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return flat.T @ flat / flat.shape[0]


class PatchWhitening(nn.Conv2d):
    """A frozen k×k, unpadded conv that whitens patches: filters ``±v_i / √(λ_i + eps)`` for the
    eigenpairs of :func:`patch_second_moment`, largest eigenvalue first; the bias is trainable.

    Its weight is all zeros until :meth:`fit` computes it from training images, once.
    """

    def __init__(self, in_chans: int = 3, kernel_size: int = 2, eps: float = 5e-4) -> None:
        dim = in_chans * kernel_size * kernel_size
        super().__init__(in_chans, 2 * dim, kernel_size, padding=0, bias=True)
        self.eps = float(eps)
        self.weight.requires_grad_(False)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters from standardized NCHW training images (float64 eigendecomposition)."""
        k = self.kernel_size[0]
        eigvals, eigvecs = torch.linalg.eigh(patch_second_moment(images.to(self.weight.device), k))
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)  # descending
        filters = (eigvecs / torch.sqrt(eigvals.clamp_min(0) + self.eps)).T
        filters = filters.reshape(-1, self.in_channels, k, k)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))

    def fit_macs(self, num_images: int, size: int = 32) -> int:
        """Multiply-adds of :meth:`fit` on ``num_images`` images: one outer product per patch."""
        k = self.kernel_size[0]
        dim = self.in_channels * k * k
        return num_images * (size - k + 1) ** 2 * dim * dim

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps:g}, frozen"


def _dirac_(weight: torch.Tensor) -> None:
    """Identity on the first ``in_channels`` filters (airbench's conv init), the rest unchanged."""
    with torch.no_grad():
        nn.init.dirac_(weight[: weight.shape[1]])


class BranchSum(nn.Module):
    """``(skip + α·branch) / √(1 + α²)``: an NF-ResNet residual merge, unit variance out for independent
    unit-variance inputs."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha, self.beta = float(alpha), math.sqrt(1 + alpha * alpha)

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return (skip + self.alpha * branch) / self.beta

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"


class ConvGroup(nn.Module):
    """``conv1 → pool → [norm1] → act1 → conv2 → [norm2] → act2`` (attributes in forward order).

    With ``alpha > 0`` (normalizer-free only) the second conv is a residual branch: ``act2`` sees
    :class:`BranchSum` of the pooled ``conv1`` output and ``conv2``'s, so a change of ``conv2`` moves
    the signal by α-scaled amounts instead of replacing it."""

    def __init__(self, in_ch: int, out_ch: int, normalizer_free: bool, bn_momentum: float,
                 bn_eps: float, dirac: bool, alpha: float = 0.0) -> None:
        super().__init__()
        if normalizer_free:
            self.conv1: nn.Conv2d = ScaledStdConv2d(in_ch, out_ch, 3, padding="symmetric", bias=True)
        else:
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = None if normalizer_free else _batch_norm(out_ch, bn_momentum, bn_eps)
        self.act1 = GammaAct("gelu_exact", gamma=None if normalizer_free else 1.0)
        if normalizer_free:
            self.conv2: nn.Conv2d = ScaledStdConv2d(out_ch, out_ch, 3, padding="symmetric", bias=True)
        else:
            self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = None if normalizer_free else _batch_norm(out_ch, bn_momentum, bn_eps)
        self.act2 = GammaAct("gelu_exact", gamma=None if normalizer_free else 1.0)
        self.merge = BranchSum(alpha) if alpha > 0 else None
        if dirac:
            _dirac_(self.conv1.weight)
            _dirac_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.conv1(x))
        if self.norm1 is not None:
            h = self.norm1(h)
        x = self.conv2(self.act1(h))
        return self.tail(h, self.norm2(x) if self.norm2 is not None else x)

    def tail(self, h: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """``act2`` of the second conv's (normalized) output, or of its merge with ``h``."""
        return self.act2(self.merge(h, branch) if self.merge is not None else branch)


def _batch_norm(channels: int, momentum: float, eps: float) -> nn.BatchNorm2d:
    """airbench's BN: ``momentum`` is the running average's decay (PyTorch's 1 − momentum), scale frozen."""
    bn = nn.BatchNorm2d(channels, eps=eps, momentum=1.0 - momentum)
    bn.weight.requires_grad_(False)
    return bn


class SpeedrunNet(nn.Module):
    """The airbench94 layout with or without BatchNorm (see the module docstring)."""

    input_size = 32

    def __init__(self, normalizer_free: bool, num_classes: int = 10, widths: Sequence[int] = (64, 256, 256),
                 in_chans: int = 3, whiten_kernel: int = 2, whiten_eps: float = 5e-4,
                 scaling_factor: float = 1 / 9, bn_momentum: float = 0.6, bn_eps: float = 1e-12,
                 dirac: bool = True, alpha: float = 0.0) -> None:
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ModelSpecError(f"widths must be three positive channel counts, got {tuple(widths)}")
        if alpha < 0 or (alpha > 0 and not normalizer_free):
            raise ModelSpecError(f"alpha (the residual branch gain) must be >= 0 and is for the normalizer-free "
                                 f"net only, got {alpha}")
        if num_classes < 1:
            raise ModelSpecError(f"num_classes must be at least 1, got {num_classes}")
        self.normalizer_free = normalizer_free
        self.whiten = PatchWhitening(in_chans, whiten_kernel, whiten_eps)
        self.act0 = GammaAct("gelu_exact", gamma=1.0)  # whitened input has unit variance already
        chans = [self.whiten.out_channels, *widths]
        self.groups = nn.Sequential(*[ConvGroup(chans[i], chans[i + 1], normalizer_free, bn_momentum,
                                                bn_eps, dirac, alpha) for i in range(3)])
        self.pool = nn.MaxPool2d(3)
        self.fc = nn.Linear(widths[-1], num_classes, bias=False)
        self.scaling_factor = float(scaling_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.groups(self.act0(self.whiten(x))))
        return self.fc(x.flatten(1)) * self.scaling_factor

    def bias_parameters(self) -> list[nn.Parameter]:
        """The shifts that take airbench's bias learning rate: BN shifts, or the WS conv biases."""
        if self.normalizer_free:
            return [c.bias for g in self.groups for c in (g.conv1, g.conv2)]  # type: ignore[misc]
        return [n.bias for g in self.groups for n in (g.norm1, g.norm2)]

    def gain_parameters(self) -> list[nn.Parameter]:
        """The WS gains: they set the signal scale of a net without BN, so they get no weight decay
        (the raw WS weights are scale-invariant, like conv weights before a BN)."""
        if not self.normalizer_free:
            return []
        return [c.gain for g in self.groups for c in (g.conv1, g.conv2)]  # type: ignore[misc]

    def preactivation_points(self) -> list[str]:
        """Module-name patterns whose outputs are the signal entering each GELU of the conv groups,
        for :func:`normfree.analysis.signal_propagation` (``blocks=``)."""
        if not self.normalizer_free:
            return ["groups.*.norm*"]
        return ["groups.*.pool", "groups.*.merge" if self.groups[0].merge is not None else "groups.*.conv2"]

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """One-batch data-dependent init of the normalizer-free net (see the module docstring): each WS
        conv's gain and bias make its pre-activation zero-mean, unit-variance per channel on ``images``.

        One forward pass: every rescaled output is computed from the unscaled one, not recomputed."""
        if not self.normalizer_free:
            raise ModelSpecError("init_from_data is for the normalizer-free net (BN needs no init pass)")
        x = self.act0(self.whiten(images))
        for g in self.groups:
            h = _standardize_into(g.conv1, g.pool(g.conv1(x)))
            x = g.tail(h, _standardize_into(g.conv2, g.conv2(g.act1(h))))


def _standardize_into(conv: ScaledStdConv2d, out: torch.Tensor) -> torch.Tensor:
    """Fold per-channel (out − mean)/std into the conv's gain and bias; return the standardized ``out``."""
    mean = out.mean(dim=(0, 2, 3))
    std = out.var(dim=(0, 2, 3), unbiased=False).add_(1e-6).sqrt_()
    assert conv.gain is not None and conv.bias is not None
    conv.gain.div_(std)
    conv.bias.sub_(mean).div_(std)
    return (out - mean[:, None, None]) / std[:, None, None]


def bn_cifar_airbench94(num_classes: int = 10, widths: Sequence[int] = (64, 256, 256), in_chans: int = 3,
                        whiten_eps: float = 5e-4, scaling_factor: float = 1 / 9, bn_momentum: float = 0.6,
                        bn_eps: float = 1e-12, dirac: bool = True) -> SpeedrunNet:
    """The airbench94 BatchNorm network (the speedrun reference)."""
    return SpeedrunNet(False, num_classes, widths, in_chans, 2, whiten_eps, scaling_factor, bn_momentum,
                       bn_eps, dirac)


def nf_cifar_speedrun(num_classes: int = 10, widths: Sequence[int] = (64, 256, 256), in_chans: int = 3,
                      whiten_eps: float = 5e-4, scaling_factor: float = 1 / 9,
                      dirac: bool = True, alpha: float = 0.0) -> SpeedrunNet:
    """The normalizer-free speedrun network (airbench94 topology, Scaled WS, γ-GELU, no BN); ``alpha > 0``
    makes each group's second conv a residual branch of that gain (:class:`ConvGroup`)."""
    return SpeedrunNet(True, num_classes, widths, in_chans, 2, whiten_eps, scaling_factor, dirac=dirac,
                       alpha=alpha)


def _register() -> None:
    from ..registry import register_model

    register_model("bn_cifar_airbench94", bn_cifar_airbench94, family="speedrun",
                   description="airbench94 BatchNorm net (frozen patch whitening), speedrun reference")
    register_model("nf_cifar_speedrun", nf_cifar_speedrun, family="speedrun",
                   description="normalizer-free airbench94-topology net (Scaled WS, γ-GELU, one-batch init)")


_register()
