import copy
import math

import pytest
import torch
from conftest import block_output_stats

import normfree
from normfree.layers import GammaAct, MaxPoolSame, ScaledStdConv2d
from normfree.models import ResidualBlock
from normfree.profile import count_macs, count_params

OFFICIAL_PARAMS_M = {26: 16.00, 50: 25.56, 101: 44.55, 152: 60.19, 200: 64.67, 288: 146.46}


@pytest.mark.parametrize("depth,params", OFFICIAL_PARAMS_M.items())
def test_nf_resnet_param_counts_match_official(meta_model, depth, params):
    assert round(count_params(meta_model(f"nf_resnet{depth}")) / 1e6, 2) == params


def test_nf_resnet50_exact_params_and_macs(meta_model):
    m = meta_model("nf_resnet50")
    assert count_params(m) == 25_557_048
    assert round(count_macs(m, 224) / 1e9, 2) == 4.09


def test_beta_schedule_of_nf_resnet50(meta_model):
    m = meta_model("nf_resnet50")
    betas = [[round(b.beta, 4) for b in stage] for stage in m.stages]
    assert betas == [[1.0, .9806, .9623], [.9449, .9806, .9623, .9449],
                     [.9285, .9806, .9623, .9449, .9285, .9129], [.898, .9806, .9623]]
    assert m.expected_var[:4] == pytest.approx([1.04, 1.08, 1.12, 1.04])


def test_stochastic_depth_schedule_is_rate_i_over_n(meta_model):
    m = meta_model("nf_resnet50", stochdepth_rate=0.2)
    rates = [b.drop_path.rate for b in m.blocks()]
    assert rates == pytest.approx([0.2 * i / 16 for i in range(16)])
    assert not any(b.drop_path.scale_by_keep for b in m.blocks())


def test_official_structure(meta_model):
    m = meta_model("nf_resnet50")
    stem_conv = m.stem.conv
    assert isinstance(stem_conv, ScaledStdConv2d) and stem_conv.kernel_size == (7, 7)
    assert stem_conv.stride == (2, 2) and stem_conv.out_channels == 64 and stem_conv.bias is not None
    assert isinstance(m.stem.pool, MaxPoolSame) and m.stem.pool.pad_type == "same"
    assert meta_model("nf_resnet50", padding="symmetric").stem.pool.pad_type == "symmetric"
    for s, stage in enumerate(m.stages):
        first = stage[0]
        assert first.is_transition and not any(b.is_transition for b in stage[1:])
        assert isinstance(first.shortcut, ScaledStdConv2d) and first.shortcut.kernel_size == (1, 1)
        assert first.shortcut.stride == ((1, 1) if s == 0 else (2, 2))
        assert first.branch.conv1.stride == first.shortcut.stride  # stride on the 3x3
        assert first.branch.conv0.out_channels == first.out_ch // 4
        assert isinstance(first.preact, GammaAct) and first.preact.scale == first.beta
        assert first.skip_gain.shape == ()
    assert isinstance(m.final, GammaAct) and m.final.gamma == normfree.layers.GAMMAS["relu"]


def test_classifier_init_std():
    torch.manual_seed(0)
    m = normfree.create_model("nf_resnet26", width=1)
    assert abs(m.fc.weight.std().item() - 0.01) < 0.001 and torch.all(m.fc.bias == 0)


def test_transition_shortcut_sees_preactivated_input():
    torch.manual_seed(0)
    block = normfree.create_model("nf_resnet26", width=0.25).stages[1][0]
    x = torch.randn(2, block.in_ch, 8, 8)
    with torch.no_grad():
        expected = block.shortcut(torch.relu(x) * normfree.layers.GAMMAS["relu"] * block.beta)
        assert torch.allclose(block(x), expected, atol=1e-6)  # skip gain 0: output = shortcut


def test_bn_twin_has_identical_topology(meta_model):
    nf, bn = meta_model("nf_resnet50"), meta_model("bn_resnet50")
    def convs(m):
        return [(n, tuple(mod.weight.shape), mod.stride) for n, mod in m.named_modules()
                if isinstance(mod, torch.nn.Conv2d)]
    assert convs(nf) == convs(bn)
    first = bn.stages[0][0]
    assert isinstance(first.preact[0], torch.nn.BatchNorm2d)  # BN -> ReLU order
    assert first.skip_gain is None and first.alpha == 1.0
    assert not any(isinstance(mod, ScaledStdConv2d) for mod in bn.modules())
    assert bn.expected_var is None


def test_cifar_variants():
    for name, params in [("nf_cifar_resnet20", 0.27), ("nf_wrn16_4", 2.75), ("bn_cifar_resnet56", 0.86)]:
        m = normfree.create_model(name)
        assert round(count_params(m) / 1e6, 2) == params
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert m.stem.conv.kernel_size == (3, 3) and not hasattr(m.stem, "pool")
    wrn = normfree.create_model("nf_wrn16_4")
    assert [len(s) for s in wrn.stages] == [2, 2, 2] and wrn.stages[0][0].is_transition


def test_signal_propagation_follows_expected_variance():
    """At init with unit skip gains: variance 1 + k·α², reset at transitions; squared mean ≈ 0."""
    torch.manual_seed(0)
    m = normfree.create_model("nf_resnet50", width=1, skipinit_gain=1.0).eval()
    stats = block_output_stats(m, torch.randn(8, 3, 128, 128))
    for (sq_mean, var), expected in zip(stats, m.expected_var):
        assert abs(var / expected - 1) < 0.10
        assert sq_mean < 0.05 * var
    # the reset is visible: each transition block's output variance is below its predecessor's
    starts = [sum(len(s) for s in m.stages[:i]) for i in range(1, 4)]
    assert all(stats[i][1] < stats[i - 1][1] for i in starts)


def test_plain_conv_variant_shows_mean_shift():
    """Without Scaled WS (He-init convs), the squared channel mean grows with depth; with it, ≈ 0."""
    x = torch.randn(16, 3, 32, 32)
    torch.manual_seed(0)
    plain = normfree.create_model("nf_cifar_resnet56", skipinit_gain=1.0, std_conv=False).eval()
    stats = block_output_stats(plain, x)
    assert stats[-1][0] > 5 * stats[0][0] and stats[-1][0] > 0.5 * stats[-1][1]
    torch.manual_seed(0)
    ws = normfree.create_model("nf_cifar_resnet56", skipinit_gain=1.0).eval()
    assert all(sq < 0.05 * var for sq, var in block_output_stats(ws, x))


def _live_model(**kw) -> torch.nn.Module:
    """A small NF-ResNet whose residual branches carry signal: non-zero skip gains (SkipInit's 0 makes
    every branch dead, and a precision test on it would only cover the shortcuts), and gains/biases
    moved off their init so every folded scalar matters."""
    torch.manual_seed(0)
    model = normfree.create_model("nf_resnet26", width=0.25, num_classes=5, skipinit_gain=0.7, **kw)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("gain", "bias")):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error of ``a`` against the reference ``b``."""
    return float((a.float() - b).norm() / b.norm())


BF16_U = 2.0**-8  # bf16 unit roundoff (8 significand bits)
FP32_U = 2.0**-24


def _branches_matter(model: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor) -> float:
    """How much the logits change when every skip gain is zeroed: the part of the output that a
    precision test of this model actually checks beyond the shortcut path."""
    dead = copy.deepcopy(model)
    with torch.no_grad():
        for b in dead.blocks():
            b.skip_gain.zero_()
        return _rel(dead(x), ref)


def test_channels_last_and_bf16_autocast():
    m = _live_model().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        assert _branches_matter(m, x, ref) > 0.1  # the branches carry a tenth of the logits or more
        m_cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
        assert m_cl.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
        out = m_cl(x.to(memory_format=torch.channels_last))
        # fp32 with another summation order: a few hundred roundings of 2^-24 at most
        assert _rel(out, ref) < 200 * FP32_U
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = m_cl(x.to(memory_format=torch.channels_last))
    assert out_bf16.dtype == torch.bfloat16
    # ~26 layers, each rounding its input and weight to bf16: random-walk error sqrt(52)·u ≈ 7u; 8u
    # allows that while an error on the branch path (a tenth of the logits, checked above) shows.
    err = _rel(out_bf16, ref)
    assert BF16_U / 8 < err < 8 * BF16_U  # also: bf16 really ran (fp32 would be ~1e-7)


def test_torch_compile_matches_eager_without_graph_breaks():
    torch._dynamo.reset()
    m = _live_model(drop_rate=0.1, use_se=True, stochdepth_rate=0.5).train()
    compiled = torch.compile(m, backend="eager", fullgraph=True)  # fullgraph raises on a break
    x = torch.randn(4, 3, 33, 33)
    outs = []
    for fn in (m, compiled):
        torch.manual_seed(1)  # same dropout and stochastic-depth draws
        out = fn(x)
        out.square().mean().backward()
        outs.append((out.detach(), [p.grad.clone() for p in m.parameters()]))
        m.zero_grad(set_to_none=True)
    (ref, ref_grads), (got, got_grads) = outs
    assert ref.shape == (4, 5)
    # the same fp32 kernels in the same order (eager backend): agreement to a few roundings
    assert _rel(got, ref) < 1e-5
    assert all(_rel(g, r) < 1e-5 for g, r in zip(got_grads, ref_grads) if r.norm() > 0)
    with torch.no_grad():
        torch.manual_seed(2)
        masked = m(x)
    assert _rel(masked, ref) > 1e-3  # stochastic depth and dropout were live in this comparison


def test_training_mode_backward_runs():
    torch.manual_seed(0)
    m = normfree.create_model("nf_cifar_resnet20", width=0.5, stochdepth_rate=0.5, drop_rate=0.2,
                              use_se=True)
    loss = torch.nn.functional.cross_entropy(m(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    assert all(isinstance(b, ResidualBlock) for b in m.blocks())


@pytest.mark.parametrize("act", ["silu", "gelu", "elu"])
def test_other_activations_keep_signal(act):
    """γ keeps the variance near the prediction for any activation (without γ it is off by γ²)."""
    torch.manual_seed(0)
    m = normfree.create_model("nf_cifar_resnet20", width=4, skipinit_gain=1.0, activation=act).eval()
    stats = block_output_stats(m, torch.randn(16, 3, 32, 32))
    for (sq_mean, var), expected in zip(stats, m.expected_var):
        assert abs(var / expected - 1) < 0.2 and sq_mean < 0.05 * var


@pytest.mark.parametrize("option, value", [("ws", "timm"), ("padding", "symmetric"),
                                           ("shortcut", "avgpool_conv")])
def test_timm_style_options_change_the_function(option, value):
    """Each timm-style option, on the same weights, computes a different function than the official one."""
    kw = dict(width=0.25, num_classes=4, skipinit_gain=1.0)
    torch.manual_seed(0)
    ref = normfree.create_model("nf_resnet26", **kw).eval()
    alt = normfree.create_model("nf_resnet26", **{option: value}, **kw).eval()
    state = ref.state_dict()
    if option == "shortcut":  # strided projections sit behind the average pool
        state = {k if k in alt.state_dict() else k.replace("shortcut.", "shortcut.conv."): v
                 for k, v in state.items()}
    alt.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)  # even size: TF-SAME pads (0, 1) at stride 2, symmetric (1, 1)
    with torch.no_grad():
        a, b = alt(x), ref(x)
    assert a.shape == b.shape == (2, 4)
    assert _rel(a, b) > 1e-3
    if option == "ws":
        assert math.isclose(alt.stem.conv.gamma, normfree.layers.GAMMAS["relu"])
        assert alt.final.gamma == 1.0  # timm: γ lives in the convs
