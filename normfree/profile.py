"""Parameter and multiply-add counts with the official counting convention."""
from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of trainable parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int | tuple[int, int], in_chans: int = 3) -> int:
    """Multiply-adds of one forward pass for a single image.

    Official convention (DeepMind ``count_conv_flops``): each conv costs
    ``out_ch · H_out · W_out · (in_ch / groups) · kh · kw``, each linear ``in · out``; activations,
    pooling, additions and biases are not counted.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

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
        model(torch.zeros(1, in_chans, h, w, device=device))
    finally:
        model.train(was_training)
        for hdl in handles:
            hdl.remove()
    return total
