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
    assert isinstance(m.stem.pool, MaxPoolSame)
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


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    m = normfree.create_model("nf_resnet26", width=0.25, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = m(x)
    m_cl = m.to(memory_format=torch.channels_last)
    out = m_cl(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = m_cl(x.to(memory_format=torch.channels_last))
    assert out_bf16.dtype == torch.bfloat16 and torch.allclose(out_bf16.float(), ref, atol=0.05)


def test_torch_compile_traces_without_graph_breaks():
    torch._dynamo.reset()
    m = normfree.create_model("nf_resnet26", width=0.125, num_classes=3, drop_rate=0.1,
                              use_se=True).train()
    compiled = torch.compile(m, backend="eager", fullgraph=True)  # fullgraph raises on a break
    out = compiled(torch.randn(2, 3, 33, 33))
    assert out.shape == (2, 3)


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


def test_timm_and_symmetric_options_build_and_differ():
    torch.manual_seed(0)
    kw = dict(width=0.25, num_classes=4, skipinit_gain=1.0)
    ref = normfree.create_model("nf_resnet26", **kw).eval()
    alt = normfree.create_model("nf_resnet26", ws="timm", padding="symmetric",
                                shortcut="avgpool_conv", **kw).eval()
    x = torch.randn(2, 3, 64, 64)
    assert ref(x).shape == alt(x).shape == (2, 4)
    assert math.isclose(alt.stem.conv.gamma, normfree.layers.GAMMAS["relu"])
    assert alt.final.gamma == 1.0  # timm: γ lives in the convs
