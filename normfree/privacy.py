"""Opacus support: ``import normfree.privacy`` and every normalizer-free model trains with
``opacus.PrivacyEngine.make_private`` in its default hooks mode.

Opacus computes per-example gradients layer by layer from the layer's input and output gradient, with a
*grad sampler* registered per module type; unregistered types fall back to re-running the layer under
``torch.func``, which fails on a residual block (stochastic depth draws random numbers) and re-does
every convolution's forward. This module registers, through Opacus's public registries:

- Scaled-WS convolutions (1-D/2-D/3-D, official, timm and plain WS) and SAME-padded convs: the
  per-example gradient of the standardized weight Ŵ is one ``convolution_backward`` vmapped over the
  batch (no unfold, no per-example loop); the chain through standardization is linear in that gradient
  and the same for every example, so one batched vector-Jacobian product of the layer's own
  standardization gives the raw weight's and the gain's per-example gradients exactly.
- Residual blocks (the scalar ``skip_gain``): ``α · Σ output_grad · branch_output`` per example. Hooks
  see a block's layers only on its plain path, so switch it on first with
  ``normfree.models.blocks.set_fast_path(model, False)``; a hooked block keeps its last branch output for this.
- ``GroupNorm2d`` (Opacus's GroupNorm sampler) and Fixup's ``ScalarBias``.

Squeeze-excite and the classifier are ``nn.Linear`` layers, which Opacus handles itself. Validators
explain why BatchNorm and EvoNorm-B0 models cannot be trained privately (their batch statistics mix the
examples of a batch) and name the alternatives; ``ModuleValidator.fix`` swaps normfree's BatchNorm for
GroupNorm as it does for ``nn.BatchNorm2d``. Fixup's post-activation blocks are reported as unsupported.
"""
from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.group_norm import compute_group_norm_grad_sample
from opacus.validators import register_module_fixer, register_module_validator
from opacus.validators.batch_norm import fix as _opacus_bn_fix
from opacus.validators.errors import ShouldReplaceModuleError, UnsupportableModuleError
from torch import nn
from torch.func import vmap

from .layers.conv import SamePadConv2d, ScaledStdConv1d, ScaledStdConv2d, ScaledStdConv3d, pad_same
from .layers.norms import BatchNorm2d, EvoNormB0, GroupNorm2d, ScalarBias
from .models.blocks import ResidualBlock

GradSamples = dict[nn.Parameter, torch.Tensor]

_ALTERNATIVES = ("a normalizer-free model (nf_*, nfnet_*, nf_regnet_*) or a batch-independent normalizer "
                 "(gnws_*: GroupNorm + WS, evos0_*)")


def conv_weight_grad_sample(conv: nn.modules.conv._ConvNd, x: torch.Tensor,
                            backprops: torch.Tensor) -> torch.Tensor:
    """Per-example gradient of the weight the conv applies (Ŵ for Scaled WS), shape (B, *weight.shape).

    ``x`` is the conv module's input (before SAME padding), ``backprops`` the gradient of its output.
    """
    x = x.to(backprops.dtype)
    padding = conv.padding
    if getattr(conv, "padding_mode_same", False):
        x = pad_same(x, conv.kernel_size, conv.stride, conv.dilation)
        padding = (0,) * len(conv.kernel_size)
    weight = conv.weight.detach().to(backprops.dtype)
    spatial = len(conv.kernel_size)
    if x.shape[0] == 0:
        return weight.new_zeros((0, *weight.shape))

    def one(xi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.convolution_backward(
            gi[None], xi[None], weight, None, conv.stride, padding, conv.dilation, False,
            [0] * spatial, conv.groups, [False, True, False])[1]

    return vmap(one)(x, backprops)


def _bias_grad_sample(conv: nn.modules.conv._ConvNd, backprops: torch.Tensor) -> GradSamples:
    if conv.bias is None or not conv.bias.requires_grad:
        return {}
    return {conv.bias: backprops.flatten(2).sum(2)}


@register_grad_sampler([ScaledStdConv1d, ScaledStdConv2d, ScaledStdConv3d])
def scaled_ws_conv_grad_sample(layer: ScaledStdConv2d, activations: list[torch.Tensor],
                               backprops: torch.Tensor) -> GradSamples:
    """Weight, gain and bias of a Scaled-WS conv, per example."""
    ret = _bias_grad_sample(layer, backprops)
    params = [p for p in (layer.weight, layer.gain) if p is not None and p.requires_grad]
    if params:
        g_hat = conv_weight_grad_sample(layer, activations[0], backprops)
        with torch.enable_grad():  # backward hooks run with grad mode off
            w_hat = layer.standardized_weight()
        grads = torch.autograd.grad(w_hat, params, g_hat.to(w_hat.dtype), is_grads_batched=True)
        ret.update(zip(params, grads))
    return ret


@register_grad_sampler(SamePadConv2d)
def same_pad_conv_grad_sample(layer: SamePadConv2d, activations: list[torch.Tensor],
                              backprops: torch.Tensor) -> GradSamples:
    """A plain conv with TensorFlow-SAME padding (Opacus's Conv2d sampler only knows ``nn.Conv2d``)."""
    ret = _bias_grad_sample(layer, backprops)
    if layer.weight.requires_grad:
        ret[layer.weight] = conv_weight_grad_sample(layer, activations[0], backprops)
    return ret


@register_grad_sampler(ResidualBlock)
def residual_block_grad_sample(layer: ResidualBlock, activations: list[torch.Tensor],
                               backprops: torch.Tensor) -> GradSamples:
    """The block's own parameter, the scalar ``skip_gain``: ``α · Σ_chw output_grad · branch_output``."""
    if layer.skip_gain is None or not layer.skip_gain.requires_grad:
        return {}
    branch, layer.branch_output = layer.branch_output, None
    if layer.post is not None:
        raise NotImplementedError("per-example skip-gain gradients of post-activation (Fixup) blocks")
    if branch is None or branch.shape != backprops.shape or getattr(layer, "activations", None):
        raise RuntimeError("a residual block's skip_gain needs one forward pass per backward pass on the "
                           "plain path: call normfree.models.blocks.set_fast_path(model, False) before "
                           "PrivacyEngine.make_private / GradSampleModule")
    return {layer.skip_gain: (backprops * branch.to(backprops.dtype)).flatten(1).sum(1) * layer.alpha}


register_grad_sampler(GroupNorm2d)(compute_group_norm_grad_sample)


@register_grad_sampler(ScalarBias)
def scalar_bias_grad_sample(layer: ScalarBias, activations: list[torch.Tensor],
                            backprops: torch.Tensor) -> GradSamples:
    return {layer.bias: backprops.flatten(1).sum(1)} if layer.bias.requires_grad else {}


@register_module_validator(BatchNorm2d)
def _validate_batch_norm(module: BatchNorm2d) -> list[ShouldReplaceModuleError]:
    return [ShouldReplaceModuleError(
        "BatchNorm normalizes each example with statistics of the whole batch, so one example's gradient "
        "depends on the others and cannot be clipped on its own, as DP-SGD requires. Use "
        f"{_ALTERNATIVES}; ModuleValidator.fix replaces BatchNorm with GroupNorm.")]


register_module_fixer(BatchNorm2d)(_opacus_bn_fix)


@register_module_validator(EvoNormB0)
def _validate_evonorm_b0(module: EvoNormB0) -> list[UnsupportableModuleError]:
    return [UnsupportableModuleError(
        f"EvoNorm-B0 divides by a batch variance (and keeps it as a running buffer), so examples are not "
        f"independent under DP-SGD. Use {_ALTERNATIVES}.")]


@register_module_validator(ResidualBlock)
def _validate_block(module: ResidualBlock) -> list[UnsupportableModuleError]:
    if module.post is None or module.skip_gain is None:
        return []
    return [UnsupportableModuleError("post-activation (Fixup) residual blocks have no per-example "
                                     f"skip-gain sampler. Use {_ALTERNATIVES}.")]
