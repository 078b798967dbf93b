import math

import pytest
import torch
import torch.nn.functional as F

from normfree.layers import (GAMMAS, GammaAct, MaxPoolSame, ScaledStdConv2d, SqueezeExcite,
                             StochasticDepth, block_drop_rates, estimate_gamma, get_activation,
                             same_pad_amounts)

RELU_GAMMA = math.sqrt(2 / (1 - 1 / math.pi))


def test_gamma_table_is_the_official_one():
    assert GAMMAS["relu"] == 1.7139588594436646
    assert GAMMAS["silu"] == 1.7881293296813965
    assert GAMMAS["gelu"] == 1.7015043497085571
    assert GAMMAS["elu"] == 1.2716004848480225
    assert GAMMAS["selu"] == 1.0008515119552612
    assert GAMMAS["tanh"] == 1.5939117670059204
    assert GAMMAS["sigmoid"] == 4.803835391998291
    assert GAMMAS["softplus"] == 1.9203323125839233
    assert GAMMAS["leaky_relu"] == 1.70590341091156
    assert GAMMAS["identity"] == 1.0
    assert get_activation("swish") == get_activation("silu")


def test_gelu_is_tanh_approximation_like_jax():
    x = torch.linspace(-3, 3, 101)
    fn, _ = get_activation("gelu")
    assert torch.allclose(fn(x), F.gelu(x, approximate="tanh"))
    assert not torch.allclose(fn(x), F.gelu(x), atol=1e-6)


def test_estimate_gamma_relu_within_0p1_percent_and_reproducible():
    g = estimate_gamma(F.relu, seed=0)
    assert abs(g / RELU_GAMMA - 1) < 1e-3
    assert estimate_gamma(F.relu, seed=0) == g
    assert estimate_gamma(F.relu, seed=1) != g


@pytest.mark.parametrize("name", ["silu", "gelu", "elu", "tanh", "softplus"])
def test_estimate_gamma_matches_table(name):
    fn, gamma = get_activation(name)
    assert abs(estimate_gamma(fn, num_samples=2**22) / gamma - 1) < 2e-3


def test_gamma_act_custom_callable_and_bad_name():
    act = GammaAct(torch.tanh)
    assert abs(act.gamma / GAMMAS["tanh"] - 1) < 2e-3
    with pytest.raises(ValueError, match="unknown activation"):
        GammaAct("relu7")
    with pytest.raises(ValueError, match="elementwise"):
        estimate_gamma(lambda x: x.sum(), num_samples=16)


def test_gamma_act_preserves_unit_variance():
    z = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    assert abs(GammaAct("relu")(z).var().item() - 1) < 0.01


def test_ws_formula_official():
    torch.manual_seed(0)
    conv = ScaledStdConv2d(8, 6, 3, groups=2)
    with torch.no_grad():
        conv.gain.copy_(torch.linspace(0.5, 2.0, 6))
    w = conv.weight
    fan_in = 4 * 3 * 3
    assert conv.fan_in == fan_in
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    expected = (w - mean) / torch.sqrt(torch.clamp(fan_in * var, min=1e-4)) * conv.gain.view(-1, 1, 1, 1)
    w_hat = conv.standardized_weight()
    assert torch.allclose(w_hat, expected, atol=1e-6)
    # per-output-channel zero mean and squared norm = gain^2 (unit fan-in variance)
    assert w_hat.mean(dim=(1, 2, 3)).abs().max() < 1e-6
    assert torch.allclose(w_hat.square().sum(dim=(1, 2, 3)), conv.gain.square(), rtol=1e-5)
    assert conv.bias is not None and torch.all(conv.bias == 0) and torch.all(ScaledStdConv2d(3, 4, 1).gain == 1)


def test_ws_eps_is_a_floor_on_fan_in_times_var():
    conv = ScaledStdConv2d(2, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1e-4, -1e-4]).view(1, 2, 1, 1))  # fan_in*var = 2e-8 < 1e-4
    w_hat = conv.standardized_weight().flatten()
    assert torch.allclose(w_hat, torch.tensor([1e-4, -1e-4]) / 1e-2)


def test_ws_timm_convention():
    torch.manual_seed(0)
    conv = ScaledStdConv2d(4, 3, 3, ws="timm", gamma=1.7)
    w = conv.weight
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    expected = (w - mean) / torch.sqrt(var + 1e-5) * 1.7 / math.sqrt(36)
    assert torch.allclose(conv.standardized_weight(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="activation"):
        ScaledStdConv2d(4, 3, 3, gamma=1.7)


@pytest.mark.parametrize("size,k,s,expected", [(224, 7, 2, (2, 3)), (112, 3, 2, (0, 1)),
                                               (7, 3, 2, (1, 1)), (56, 1, 2, (0, 0)), (9, 3, 1, (1, 1))])
def test_same_padding_amounts(size, k, s, expected):
    assert same_pad_amounts(size, k, s) == expected


def test_same_conv_matches_explicit_asymmetric_padding():
    torch.manual_seed(0)
    conv = ScaledStdConv2d(3, 4, 3, stride=2)
    x = torch.randn(2, 3, 8, 8)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.standardized_weight(), conv.bias, 2)
    assert conv(x).shape == (2, 4, 4, 4)
    assert torch.allclose(conv(x), ref, atol=1e-6)
    sym = ScaledStdConv2d(3, 4, 3, stride=2, padding="symmetric")
    sym.load_state_dict(conv.state_dict())
    assert not torch.allclose(sym(x), conv(x))


def test_maxpool_same_pads_with_minus_infinity():
    x = -torch.ones(1, 1, 4, 4) - torch.arange(16.0).view(1, 1, 4, 4)
    out = MaxPoolSame()(x)  # TF SAME: pad (0, 1); zero padding would leak 0s into the max
    assert out.shape == (1, 1, 2, 2)
    assert torch.all(out < 0)
    assert out[0, 0, 0, 0] == x[0, 0, :3, :3].max()


def test_stochastic_depth_official_semantics():
    torch.manual_seed(0)
    sd = StochasticDepth(0.5)
    x = torch.ones(4000, 3, 2, 2)
    out = sd(x)
    per_example = out.flatten(1)
    assert set(per_example.unique().tolist()) <= {0.0, 1.0}  # not rescaled
    assert torch.all(per_example.min(1).values == per_example.max(1).values)  # whole examples
    assert abs(per_example[:, 0].mean().item() - 0.5) < 0.03
    assert set(StochasticDepth(0.5, scale_by_keep=True)(x).unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(sd.eval()(x), x)
    assert block_drop_rates(0.1, 4) == pytest.approx([0.0, 0.025, 0.05, 0.075])
    with pytest.raises(ValueError):
        StochasticDepth(1.0)


def test_squeeze_excite_x2_gain():
    se = SqueezeExcite(8, 2)
    torch.nn.init.zeros_(se.fc1.weight)
    torch.nn.init.zeros_(se.fc1.bias)
    x = torch.randn(2, 8, 3, 3)
    assert torch.allclose(se(x), x)  # sigmoid(0) * 2 = 1


@pytest.mark.parametrize("dims", [1, 3])
def test_ws_conv_1d_3d(dims):
    from normfree.layers import ScaledStdConv1d, ScaledStdConv3d
    from normfree.layers.conv import _ScaledWSFunction

    cls = {1: ScaledStdConv1d, 3: ScaledStdConv3d}[dims]
    torch.manual_seed(0)
    conv = cls(4, 6, 3, stride=2, groups=2).double()
    assert conv.fan_in == 2 * 3**dims
    with torch.no_grad():
        conv.gain.add_(torch.randn(6, dtype=torch.double) * 0.2)
        conv.weight[0] = 1e-4  # clamped channel
    w_hat = conv.standardized_weight()
    axes = tuple(range(1, dims + 2))
    assert w_hat.mean(dim=axes).abs().max() < 1e-12
    torch.testing.assert_close(w_hat[1:].square().sum(dim=axes), conv.gain[1:].square())
    torch.testing.assert_close(w_hat, conv.standardized_weight_reference())
    scale = torch.tensor(0.7, dtype=torch.double, requires_grad=True)
    args = (conv.weight, conv.gain, scale, conv.fan_in, conv.eps, None)
    assert torch.autograd.gradcheck(lambda *a: _ScaledWSFunction.apply(*a)[0], args)
    # TF-SAME, 3-tap kernel at stride 2 on even sizes: output size / 2, padded (0, 1) along each axis
    x = torch.randn((2, 4) + (8,) * dims, dtype=torch.double)
    conv_fn = {1: F.conv1d, 3: F.conv3d}[dims]
    ref = conv_fn(F.pad(x, (0, 1) * dims), conv.standardized_weight(), conv.bias, 2, groups=2)
    out = conv(x)
    assert out.shape == (2, 6) + (4,) * dims
    torch.testing.assert_close(out, ref)


def test_avgpool_same_excludes_padded_cells():
    from normfree.layers import AvgPoolSame

    x = torch.randn(2, 3, 5, 7)
    out = AvgPoolSame()(x)  # TF SAME at odd sizes: pad (0, 1); the last row/column average fewer cells
    assert out.shape == (2, 3, 3, 4)
    torch.testing.assert_close(out[..., -1, -1], x[..., -1, -1])  # a corner window holds one real cell
    torch.testing.assert_close(out[..., -1, 0], x[..., -1, :2].mean(-1))
    torch.testing.assert_close(out[..., :2, :3], F.avg_pool2d(x[..., :4, :6], 2, 2))


def test_gamma_act_applies_gamma_times_scale():
    x = torch.randn(100)
    act = GammaAct("relu", scale=0.6)
    assert act.factor == pytest.approx(GAMMAS["relu"] * 0.6)
    torch.testing.assert_close(act(x), torch.relu(x) * GAMMAS["relu"] * 0.6)


def test_stochastic_depth_keeps_with_probability_one_minus_rate():
    torch.manual_seed(0)
    mask = StochasticDepth(0.2)(torch.ones(20_000, 1))
    assert abs(mask.mean().item() - 0.8) < 0.01  # binomial std 0.003
