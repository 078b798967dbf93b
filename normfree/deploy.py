"""Deploy mode: an inference copy of a model that is a plain conv + activation network.

:func:`deploy` computes every Scaled-WS weight once and folds every scalar into a weight:
the pre-activation's γ·β and inner activations' γ into the next conv, α·g into the last conv's weight
and bias (or the SE gate), the final activation's γ into the classifier, and — for normalized twins —
every BatchNorm that directly follows a conv into that conv. (A pre-activation BatchNorm on the
residual stream cannot be folded: it stays as one affine pass.) TF-'SAME' padding stays the dynamic pad
op, so the deployed model accepts any input size, exactly as the training form does.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import GammaAct, ScaledStdConv2d, SqueezeExcite
from .layers.conv import SamePadConv2d
from .models.blocks import _LINEAR_POOLS, ResidualBlock
from .models.net import ResNet


@torch.no_grad()
def deploy(model: nn.Module) -> nn.Module:
    """Return an eval-mode, frozen copy of ``model`` with weights standardized once and scalars folded.

    Its logits equal the training form's (in eval mode) up to float rounding. Intermediate features are
    not preserved: the final activation's γ moves into the classifier.
    """
    model = copy.deepcopy(model).eval()
    _replace_ws_convs(model)
    for block in [m for m in model.modules() if isinstance(m, ResidualBlock)]:
        _fold_block(block)
    final = getattr(model, "final", None) if isinstance(model, ResNet) else None
    final_act = final[-1] if isinstance(final, nn.Sequential) and len(final) else final
    if isinstance(final_act, GammaAct):  # global average pooling commutes with γ
        model.fc.weight.mul_(final_act.factor)
        _unit(final_act)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _plain_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A plain conv (dynamic TF-SAME padding where the source had it) holding the given tensors."""
    same = getattr(conv, "padding_mode_same", False)
    cls, padding = (SamePadConv2d, 0) if same else (nn.Conv2d, conv.padding)
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
              conv.stride, padding, conv.dilation, conv.groups, bias=bias is not None,  # type: ignore[arg-type]
              device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return new


def _replace_ws_convs(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ScaledStdConv2d):
                weight = child.standardized_weight_reference()
                setattr(parent, name, _plain_conv(child, weight, child.bias))


def _unit(act: GammaAct) -> None:
    act.gamma, act.scale = 1.0, 1.0


def _scale_in(target: nn.Module, factor: float) -> bool:
    """Multiply the conv that consumes a signal (possibly behind average pools) by ``factor``."""
    conv = target[-1] if isinstance(target, nn.Sequential) else target
    if not isinstance(conv, nn.Conv2d) or (isinstance(target, nn.Sequential) and not all(
            isinstance(m, _LINEAR_POOLS) for m in list(target)[:-1])):
        return False
    conv.weight.mul_(factor)
    return True


def _fold_bn_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by eval-mode BN as one conv."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return _plain_conv(conv, conv.weight * scale.view(-1, 1, 1, 1),
                       (bias - bn.running_mean) * scale + bn.bias)


def _fold_block(block: ResidualBlock) -> None:
    mods = list(block.branch.named_children())
    # BatchNorm right after a conv: into the conv.
    for (prev_name, prev), (name, m) in zip(mods, mods[1:]):
        if (isinstance(prev, nn.Conv2d) and isinstance(m, nn.Sequential) and len(m) == 2
                and isinstance(m[0], nn.BatchNorm2d) and isinstance(m[1], GammaAct)):
            setattr(block.branch, prev_name, _fold_bn_into(getattr(block.branch, prev_name), m[0]))
            setattr(block.branch, name, m[1])
    mods = list(block.branch)
    # Activation scalars: into the next conv (the shortcut conv too, for the pre-activation).
    if isinstance(block.preact, GammaAct) and isinstance(mods[0], nn.Conv2d) and (
            block.shortcut is None or _scale_in(block.shortcut, block.preact.factor)):
        mods[0].weight.mul_(block.preact.factor)
        _unit(block.preact)
    for m, nxt in zip(mods, mods[1:]):
        if isinstance(m, GammaAct) and isinstance(nxt, nn.Conv2d):
            nxt.weight.mul_(m.factor)
            _unit(m)
    # α·g: into the last conv (weight and bias) or the SE gate.
    gain = block.alpha * (1.0 if block.skip_gain is None else float(block.skip_gain))
    last = mods[-1]
    if isinstance(last, nn.Conv2d):
        last.weight.mul_(gain)
        if last.bias is not None:
            last.bias.mul_(gain)
    elif isinstance(last, SqueezeExcite):
        last.gain *= gain
    else:
        return
    block.alpha, block.skip_gain = 1.0, None
    block.drop_path.rate = 0.0
