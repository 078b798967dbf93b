"""Parameter and multiply-add counts with the official counting convention."""
from __future__ import annotations

import math

import torch
from torch import nn

from .models.blocks import unfolded


def count_params(model: nn.Module) -> int:
    """Number of trainable parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int | tuple[int, int], in_chans: int = 3,
               exact: bool = False) -> int:
    """Multiply-adds of one forward pass for a single image.

    Official convention (DeepMind ``count_conv_flops``): each conv costs
    ``out_ch · H_out · W_out · (in_ch / groups) · kh · kw``, each linear ``in · out``; activations,
    pooling, additions and biases are not counted. The official counter divides the image size by
    each stride as a float, so at sizes not divisible by the total stride (NF-RegNet-B5 at 456 px) its
    H_out is the nominal ``H / cumulative stride`` rather than the real, rounded-up output size; that
    is what is counted here unless ``exact=True`` (real output shapes).
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    total = 0.0

    def nominal(size: int, out: int) -> float:
        # cumulative stride, a power of two, recovered from the real (rounded-up) output size
        return size / 2 ** round(math.log2(size / out))

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        ho, wo = out.shape[-2:]
        area = ho * wo if exact else nominal(h, ho) * nominal(w, wo)
        total += out.shape[1] * area * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp: tuple, _out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device  # works on the "meta" device: shapes only, no compute
        with unfolded(model):  # the folded block path does not call the hooked convs as modules
            model(torch.zeros(1, in_chans, h, w, device=device))
    finally:
        model.train(was_training)
        for hdl in handles:
            hdl.remove()
    return round(total)
