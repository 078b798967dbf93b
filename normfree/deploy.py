"""Deploy mode: an inference copy of a model that is a plain conv + activation network.

:func:`deploy` computes every Scaled-WS weight once and asks every module that owns foldable scalars
(:class:`Folding`: residual blocks, the network's head) to fold them into its weights. Each residual
block follows its :class:`~normfree.models.fold.FoldPlan`, the plan its folded training path uses:
the pre-activation's γ·β and inner activations' γ into the next conv, α·g into the last conv's weight
and bias (or the SE gate), and — for normalized twins — every BatchNorm that directly follows a conv
into that conv. The network moves the final activation's γ into the classifier. A pre-activation
BatchNorm on the residual stream cannot be folded: it stays as one affine pass. TF-'SAME' padding
stays the dynamic pad op, so the deployed model accepts any input size, as the training form does.
"""
from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .layers import ScaledStdConv2d
from .layers.conv import plain_conv


@runtime_checkable
class Folding(Protocol):
    """A module whose scalars deploy mode folds into its own weights, in place."""

    def fold_scalars_(self) -> None: ...


@torch.no_grad()
def deploy(model: nn.Module) -> nn.Module:
    """Return an eval-mode, frozen copy of ``model`` with weights standardized once and scalars folded.

    Its logits equal the training form's (in eval mode) up to float rounding. Intermediate features are
    not preserved: the final activation's γ moves into the classifier.
    """
    model = copy.deepcopy(model).eval()
    _replace_ws_convs(model)
    for m in list(model.modules()):
        if isinstance(m, Folding):
            m.fold_scalars_()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _replace_ws_convs(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ScaledStdConv2d):
                weight = child.standardized_weight_reference()
                setattr(parent, name, plain_conv(child, weight, child.bias))
