"""Tiny live models shared by the client tests: every path of the network reaches the logits."""
from __future__ import annotations

import torch
from torch import nn

import normfree
from normfree.models.blocks import ResidualBlock

TINY = {"widths": [16, 16, 32, 32], "depths": [1, 1, 1, 1], "num_classes": 5}


def live(model: nn.Module, skip_gain: float = 0.5) -> nn.Module:
    """``model`` with non-zero skip gains and a random classifier, in place. The official inits (skip
    gain 0, NF-RegNet's zero classifier) would give all-zero logits: a comparison of two exporters'
    outputs would then pass for any graph, and a relative error would be 0/0."""
    with torch.no_grad():
        for b in model.modules():
            if isinstance(b, ResidualBlock) and b.skip_gain is not None:
                b.skip_gain.fill_(skip_gain)
        if hasattr(model, "fc"):
            model.fc.weight.normal_(0.0, 0.3)
    return model


def tiny_regnet(**kw) -> nn.Module:
    """A seeded tiny NF-RegNet-B0 (TF-SAME padding, SE, average-pool shortcuts), made live."""
    torch.manual_seed(0)
    return live(normfree.create_model("nf_regnet_b0", **{**TINY, **kw}))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖, refusing an all-zero reference (the error would be NaN or meaningless)."""
    out, ref = out.detach(), ref.detach()
    scale = ref.norm()
    assert scale > 0, "the reference output is all zeros: the comparison would be vacuous"
    return float((out - ref).norm() / scale)
