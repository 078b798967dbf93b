"""Tracers: torch.export with dynamic batch, H and W (the TF-SAME amounts stay one symbolic formula),
and torch.fx.symbolic_trace (what torchvision's create_feature_extractor builds on)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import normfree
from normfree.layers.conv import AvgPoolSame, MaxPoolSame, SamePadConv2d, same_pad_amounts

from .tiny import rel_err, tiny_regnet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_same_pad_amounts_match_tensorflow_formula():
    """The integer-only formula equals TensorFlow's max((ceil(n/s) - 1)·s + k_eff - n, 0), split
    floor/ceil, for every size, kernel, stride and dilation used (and k < s, where the clamp bites)."""
    for n in range(1, 40):
        for k in (1, 2, 3, 5, 7):
            for s in (1, 2, 3, 4):
                for d in (1, 2):
                    eff = (k - 1) * d + 1
                    total = max((math.ceil(n / s) - 1) * s + eff - n, 0)
                    assert same_pad_amounts(n, k, s, d) == (total // 2, total - total // 2), (n, k, s, d)


class _SameStack(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(SamePadConv2d(3, 4, 3, 2), MaxPoolSame(3, 2), AvgPoolSame(2, 2),
                         SamePadConv2d(4, 4, 5, 1))


def test_torch_export_dynamic_hw_same_padding():
    """torch.export with dynamic H and W over SAME convs and pools: one graph, exact at odd sizes."""
    torch.manual_seed(0)
    m = _SameStack().eval()
    dims = {0: torch.export.Dim("N"), 2: torch.export.Dim("H", min=24, max=256),
            3: torch.export.Dim("W", min=24, max=256)}
    ep = torch.export.export(m, (torch.randn(2, 3, 64, 64),), dynamic_shapes=(dims,))
    for n, h, w in [(1, 33, 47), (3, 41, 40), (2, 64, 64), (2, 25, 99)]:
        x = torch.randn(n, 3, h, w)
        torch.testing.assert_close(ep.module()(x), m(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_torch_export_whole_model_dynamic_hw(form):
    """The whole network (SAME convs, SAME max-pool-free stem, average-pool shortcuts, SE) exported once
    with dynamic N/H/W: exact against eager at odd sizes and other batches."""
    model = tiny_regnet().eval()
    model = normfree.deploy(model) if form == "deploy" else model
    dims = {0: torch.export.Dim("N"), 2: torch.export.Dim("H", min=64, max=512),
            3: torch.export.Dim("W", min=64, max=512)}
    ep = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=(dims,))
    for n, h, w in [(1, 65, 71), (3, 97, 64), (2, 127, 99)]:
        x = torch.randn(n, 3, h, w)
        with torch.no_grad():
            assert rel_err(ep.module()(x), model(x)) < 1e-6, (n, h, w)


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_fx_symbolic_trace_matches_eager(form):
    """The traced training form standardizes its weights with the textbook formula (FX cannot record the
    fused autograd Function eager mode runs with gradients on): fp32 round-off apart. The deploy form
    runs the same ops: exact."""
    model = tiny_regnet(stochdepth_rate=0.2).eval()
    model = normfree.deploy(model) if form == "deploy" else model
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 45, 51)  # odd sizes: SAME padding is computed at run time, not traced in
    out, ref = gm(x), model(x)
    if form == "deploy":
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    else:
        assert rel_err(out, ref) < 1e-5


def test_fx_trace_in_training_mode_keeps_stochastic_depth_and_gradients():
    model = tiny_regnet(stochdepth_rate=0.5).train()
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(4, 3, 40, 40)

    def seeded(fn: nn.Module, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return fn(x)

    ref, out, again, other = seeded(model, 1), seeded(gm, 1), seeded(gm, 1), seeded(gm, 2)
    assert rel_err(out, ref) < 1e-5 and torch.equal(out, again)  # the traced masks follow the seed
    assert rel_err(other, out) > 1e-2  # and are random: another seed drops other blocks
    out.sum().backward()
    assert model.stem.conv.weight.grad is not None
