"""Each baseline's defining property at initialization, its NF twin topology, and its SPP shape."""
import math

import pytest
import torch
from conftest import block_output_stats
from torch import nn

import normfree
from normfree.layers import GammaAct, ScaledStdConv2d
from normfree.layers.norms import SIGMA_ACT, EvoNormB0, EvoNormS0, ScalarBias, fit_groups
from normfree.models.baselines import (BASELINES, fixup_param_groups, revisited_bn_param_groups)

PREFIXES = ["bn", *BASELINES]
ARCHES = ["resnet50", "cifar_resnet20", "wrn16_4"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: on a shared 2-core machine intra-op threads cost far more than they
    save (measured 80 s vs 18 s for this file under load), so run single-threaded, then restore."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def conv_topology(model):
    return [(n, tuple(m.weight.shape), m.stride) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_baseline_is_a_topology_twin_of_nf(meta_model, prefix, arch):
    nf, other = meta_model(f"nf_{arch}"), meta_model(f"{prefix}_{arch}")
    assert conv_topology(other) == conv_topology(nf)
    assert len(other.blocks()) == len(nf.blocks()) and other.fc.weight.shape == nf.fc.weight.shape


def test_every_depth_is_registered_for_every_baseline():
    for prefix in BASELINES:
        names = normfree.list_models(f"{prefix}_*")
        nf_resnets = [n for n in normfree.list_models("nf_*")
                      if not n.startswith("nf_regnet") and n != "nf_cifar_speedrun"]  # no baseline twins
        assert len(names) == len(nf_resnets), prefix


def stage_slices(model):
    """Index ranges of each stage's blocks in ``model.blocks()`` order."""
    out, i = [], 0
    for stage in model.stages:
        out.append(slice(i, i + len(stage)))
        i += len(stage)
    return out


def spp(name, **kw):
    torch.manual_seed(0)
    model = normfree.create_model(name, **kw)
    stats = block_output_stats(model, torch.randn(16, 3, 32, 32))
    assert all(math.isfinite(q) and math.isfinite(v) for q, v in stats), name
    sqm, var = zip(*stats)
    return model, list(sqm), list(var)


def per_block_growth(values, sl):
    seg = values[sl]
    return (seg[-1] - seg[0]) / (len(seg) - 1)


# ---------------------------------------------------------------- BN orders and revisited BN

def test_bn_relu_spp_has_the_relu_mean_shift():
    """BN→ReLU→He conv: each block adds 1 − 1/π ≈ 0.68 variance and a growing squared mean."""
    model, sqm, var = spp("bn_cifar_resnet56")
    for sl in stage_slices(model)[1:]:
        assert 0.55 < per_block_growth(var, sl) < 0.8
        assert per_block_growth(sqm, sl) > 0.1


def test_relu_bn_order_and_its_zero_mean_spp():
    torch.manual_seed(0)
    model = normfree.create_model("relubn_cifar_resnet20")
    block = model.stages[1][1]
    for layer in (block.preact, block.branch.act1, model.final):
        assert isinstance(layer[0], GammaAct) and isinstance(layer[1], nn.BatchNorm2d)
    x = torch.randn(8, block.in_ch, 8, 8) + 1.0
    out = block.preact(x)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5 and out.min() < 0  # BN last: centred
    bn_out = normfree.create_model("bn_cifar_resnet20").stages[1][1].preact(x)
    assert bn_out.min() >= 0  # BN→ReLU ends in the ReLU
    # SPP: BN output (zero mean, unit var) into a He conv (gain 2) adds ≈ 2 per block, mean ≈ 0
    model, sqm, var = spp("relubn_cifar_resnet56")
    for sl in stage_slices(model)[1:]:
        assert 1.6 < per_block_growth(var, sl) < 2.3
        assert max(q / v for q, v in zip(sqm[sl], var[sl])) < 0.01


def test_revisited_bn_scale_init_and_input_normalization():
    torch.manual_seed(0)
    model = normfree.create_model("revbn_cifar_resnet20")
    inp = model.stem.input_norm
    assert list(model.stem.named_children())[0][0] == "input_norm"
    assert torch.allclose(inp.weight, torch.full((3,), 0.1 * SIGMA_ACT))
    assert not inp.bias.requires_grad and torch.all(inp.bias == 0)
    others = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m is not inp]
    assert others and all(torch.all(m.weight == 0.1) for m in others)
    assert normfree.create_model("revbn_cifar_resnet20", norm_kwargs={"scale_init": 0.5}
                                 ).stem.input_norm.weight[0].item() == pytest.approx(0.29)
    # online normalization: raw [0, 1] images and the same images in [0, 255] give the same output
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        a, b = model.forward_features(x), model.forward_features(x * 255 + 7)
        bn = normfree.create_model("bn_cifar_resnet20")
        c, d = bn.forward_features(x), bn.forward_features(x * 255 + 7)
    assert (a - b).abs().max() < 1e-3 * a.abs().max()  # equal up to BN's ε
    assert (c - d).abs().max() > 0.1 * c.abs().max()  # the twin without it sees the pixel scale


def test_revisited_bn_spp_is_bn_relu_scaled_by_init_squared():
    model, _, var = spp("revbn_cifar_resnet56")
    for sl in stage_slices(model)[1:]:
        assert 0.55 * 0.01 < per_block_growth(var, sl) < 0.8 * 0.01


def test_revisited_bn_param_groups():
    model = normfree.create_model("revbn_cifar_resnet20")
    groups = revisited_bn_param_groups(model, lr=0.1, weight_decay=5e-4)
    decay, no_decay, scales = groups
    assert decay["weight_decay"] == 5e-4 and "lr" not in decay
    assert all(p.ndim == 4 for p in decay["params"][:-1]) and decay["params"][-1] is model.fc.weight
    assert no_decay["weight_decay"] == 0 and all(p.ndim == 1 for p in no_decay["params"])
    assert scales["lr"] == pytest.approx(1e-3) and scales["weight_decay"] == 0
    bn_weights = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {id(p) for p in scales["params"]} == {id(p) for p in bn_weights}
    assert not any(p is model.stem.input_norm.bias for g in groups for p in g["params"])  # frozen
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="c divides"):
        revisited_bn_param_groups(model, lr=0.1, c=0.5)


# ---------------------------------------------------------------- GroupNorm + WS

def test_gn_ws_weight_statistics_and_layers():
    torch.manual_seed(0)
    model = normfree.create_model("gnws_cifar_resnet20", width=2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(c, ScaledStdConv2d) and c.ws == "plain" for c in convs)
    for conv in convs:
        assert conv.gain is None and conv.bias is None
        with torch.no_grad():
            conv.weight.mul_(3.0).add_(0.5)  # WS must remove any scale and shift of the raw weight
        w = conv.standardized_weight().flatten(1)
        assert w.mean(dim=1).abs().max() < 1e-5
        assert torch.allclose(w.var(dim=1), torch.ones(w.shape[0]), rtol=1e-3)  # unbiased, as Qiao
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and all(m.num_groups == min(32, m.num_channels) for m in gns)  # stem width 16
    assert fit_groups(16, 32) == 16 and fit_groups(48, 32) == 24


def test_gn_ws_spp_grows_by_fan_in_times_relu_variance():
    """Unscaled WS gives unit-variance weights, so a conv on GN→ReLU output has variance
    fan_in·½(1 − 1/π): each block adds that (GN renormalizes the next branch input), mean ≈ 0."""
    model, sqm, var = spp("gnws_cifar_resnet56")
    for sl, stage in zip(stage_slices(model)[1:], list(model.stages)[1:]):
        fan_in = stage[1].branch[-1].fan_in
        expected = fan_in * 0.5 * (1 - 1 / math.pi)
        assert 0.8 * expected < per_block_growth(var, sl) < 1.2 * expected
        assert max(q / v for q, v in zip(sqm[sl], var[sl])) < 0.01


# ---------------------------------------------------------------- EvoNorm

def test_evonorm_s0_is_independent_of_other_batch_items():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    y = torch.cat([x[:1], 5 * torch.randn(3, 3, 32, 32) + 2])
    for prefix, independent in (("evos0", True), ("evob0", False)):
        model = normfree.create_model(f"{prefix}_cifar_resnet20").train()
        with torch.no_grad():
            a, b = model.forward_features(x)[0], model.forward_features(y)[0]
        assert torch.allclose(a, b, atol=1e-5) == independent, prefix
        kind = EvoNormS0 if independent else EvoNormB0
        assert isinstance(model.stages[1][1].preact, kind) and isinstance(model.final, kind)
        assert not any(isinstance(m, (GammaAct, nn.BatchNorm2d)) for m in model.modules())


def test_evonorm_s0_formula():
    torch.manual_seed(0)
    layer = EvoNormS0(64, groups=32)
    with torch.no_grad():
        layer.v.uniform_(0.5, 1.5)
    x = torch.randn(2, 64, 4, 4)
    g = x.reshape(2, 32, 2, 4, 4)
    std = (g.var(dim=(2, 3, 4), unbiased=False, keepdim=True) + 1e-5).sqrt().expand_as(g)
    expected = x * torch.sigmoid(x * layer.v) / std.reshape(x.shape)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_evonorm_b0_uses_running_statistics_in_eval():
    torch.manual_seed(0)
    layer = EvoNormB0(8, momentum=0.1)
    x = 3 * torch.randn(16, 8, 6, 6)
    layer.train()(x)
    n = x.numel() / 8
    batch_var = x.var(dim=(0, 2, 3), unbiased=False) * n / (n - 1)
    assert torch.allclose(layer.running_var.flatten(), 0.9 + 0.1 * batch_var, rtol=1e-5)
    layer.eval()
    one = x[:1]
    inst = (one.var(dim=(2, 3), unbiased=False, keepdim=True) + 1e-3).sqrt()  # timm's ε
    expected = one / torch.maximum((layer.running_var + 1e-3).sqrt(), one + inst)
    with torch.no_grad():
        assert torch.allclose(layer(one), expected, atol=1e-6)
        assert torch.allclose(layer(x)[:1], layer(one), atol=1e-6)  # eval: batch-independent
        assert not torch.allclose(layer.train()(x)[:1], layer.train()(one), atol=1e-3)
    # the whole network too: in eval one example's output ignores the rest of the batch
    model = normfree.create_model("evob0_cifar_resnet20", fc_init_std=0.01)
    model.train()(torch.randn(8, 3, 32, 32))
    model.eval()
    z = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(z)[:1], model(z[:1]), atol=1e-5)


def test_spp_measures_evonorm_b0_with_batch_statistics():
    """As BN: the analysis package must not measure B0 with its initial running variance of 1 (which
    leaves the signal unnormalized: the residual variance then grows ~70x over 9 blocks)."""
    from normfree.analysis import measurement_mode, signal_propagation

    torch.manual_seed(0)
    model = normfree.create_model("evob0_cifar_resnet20").eval()
    layers = [m for m in model.modules() if isinstance(m, EvoNormB0)]
    before = [m.running_var.clone() for m in layers]
    with measurement_mode(model):
        assert all(m.training for m in layers)
    result = signal_propagation(model, input_shape=(16, 3, 32, 32))
    assert max(result.res_var) < 5
    assert not any(m.training for m in layers)
    assert all(torch.equal(a, m.running_var) for a, m in zip(before, layers))


@pytest.mark.parametrize("prefix", ["evob0", "evos0"])
def test_evonorm_spp_finite_and_growing(prefix):
    model, _, var = spp(f"{prefix}_cifar_resnet56")
    for sl in stage_slices(model):
        assert all(b > a for a, b in zip(var[sl], var[sl][1:]))


def test_inconsistent_layer_options_are_rejected():
    with pytest.raises(ValueError, match="own nonlinearity"):
        normfree.create_model("evos0_cifar_resnet20", activation="gelu")
    with pytest.raises(ValueError, match="without a norm"):
        normfree.create_model("nf_cifar_resnet20", norm_order="act_norm")
    with pytest.raises(ValueError, match="needs a normalization"):
        normfree.create_model("nf_cifar_resnet20", ws="plain")
    with pytest.raises(ValueError, match="unknown norm"):
        normfree.create_model("nf_cifar_resnet20", norm="ln")


# ---------------------------------------------------------------- Fixup

@pytest.mark.parametrize("name,m", [("fixup_cifar_resnet56", 2), ("fixup_resnet26", 3)])
def test_fixup_zero_branches_and_scaled_init(name, m):
    torch.manual_seed(0)
    model = normfree.create_model(name, **({} if m == 2 else {"width": 0.5}))
    blocks = model.blocks()
    scale = len(blocks) ** (-1 / (2 * m - 2))
    ratios = []
    for block in blocks:
        convs = [c for c in block.branch.modules() if isinstance(c, nn.Conv2d)]
        assert len(convs) == m and torch.all(convs[-1].weight == 0)
        for c in convs[:-1]:
            he_fan_out = math.sqrt(2 / (c.out_channels * c.kernel_size[0] * c.kernel_size[1]))
            ratios.append(c.weight.std().item() / (scale * he_fan_out))
        assert block.skip_gain.item() == 1 and block.alpha == 1 and block.beta == 1
        assert all(p.item() == 0 for mod in block.modules() if isinstance(mod, ScalarBias)
                   for p in mod.parameters())
    assert sum(ratios) / len(ratios) == pytest.approx(1.0, abs=0.03)
    assert min(ratios) > 0.8 and max(ratios) < 1.2
    assert torch.all(model.fc.weight == 0) and torch.all(model.fc.bias == 0)
    assert not any(c.bias is not None for c in model.modules() if isinstance(c, nn.Conv2d))


def test_fixup_block_is_post_activation_with_shared_input_bias():
    torch.manual_seed(0)
    model = normfree.create_model("fixup_cifar_resnet20")
    block, transition = model.stages[0][1], model.stages[1][0]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # leave the zero init to see every piece
        x = torch.randn(2, block.in_ch, 8, 8)
        br = block.branch
        b1a = block.preact.bias
        h = br.conv0(x + b1a)
        h = br.conv1(torch.relu(h + br.act1.bias_in.bias) + br.act1.bias_out.bias)
        expected = torch.relu(h * block.skip_gain + block.post.bias.bias + x)
        assert torch.allclose(block(x), expected, atol=1e-5)
        # the projection shortcut sees x + bias1a, like the branch (official ``downsample(x + bias1a)``)
        t = transition
        x = torch.randn(2, t.in_ch, 8, 8)
        xb = x + t.preact.bias
        expected = torch.relu(t.branch(xb) * t.skip_gain + t.post.bias.bias + t.shortcut(xb))
        assert torch.allclose(t(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="Fixup has no"):
        normfree.models.resnet(20, small_input=True, fixup=True, std_conv=False)


def test_fixup_spp_is_flat_within_stages():
    """Zero branches: every non-transition block returns relu(input) = its (already activated) input."""
    model, sqm, var = spp("fixup_cifar_resnet56")
    for sl in stage_slices(model):
        assert len(set(var[sl])) == 1 and len(set(sqm[sl])) == 1


def test_fixup_param_groups_lower_lr_for_scalars():
    model = normfree.create_model("fixup_cifar_resnet20")
    others, scalars = fixup_param_groups(model, lr=0.1, weight_decay=1e-4)
    assert scalars["lr"] == pytest.approx(0.01) and scalars["weight_decay"] == 1e-4
    assert all(p.ndim == 0 for p in scalars["params"][:-1]) and scalars["params"][-1] is model.fc.bias
    n_scalar = sum(1 for m in model.modules() if isinstance(m, ScalarBias)) + len(model.blocks())
    assert len(scalars["params"]) == n_scalar + 1
    assert all(p.ndim >= 2 for p in others["params"]) and "lr" not in others


# ---------------------------------------------------------------- SkipInit

def test_skipinit_branches_off_plain_convs_no_alpha_beta():
    torch.manual_seed(0)
    model = normfree.create_model("skipinit_cifar_resnet20")
    assert model.expected_var is None
    assert not any(isinstance(m, ScaledStdConv2d) for m in model.modules())
    for block in model.blocks():
        assert block.skip_gain.item() == 0 and block.alpha == 1 and block.beta == 1
        assert isinstance(block.preact, GammaAct) and block.preact.gamma == 1 and block.preact.scale == 1
    block, transition = model.stages[0][1], model.stages[1][0]
    x = torch.randn(2, block.in_ch, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), x)
        assert torch.allclose(transition(x), transition.shortcut(torch.relu(x)), atol=1e-6)
    _, sqm, var = spp("skipinit_cifar_resnet56")
    for sl in stage_slices(model):
        assert len(set(var[sl])) == 1


@pytest.mark.parametrize("prefix", PREFIXES)
def test_imagenet_size_spp_is_finite(prefix):
    torch.manual_seed(0)
    model = normfree.create_model(f"{prefix}_resnet26", width=0.25, num_classes=10)
    stats = block_output_stats(model, torch.randn(4, 3, 64, 64))
    assert len(stats) == 8 and all(math.isfinite(q) and 0 < v < 1e6 for q, v in stats)
    if prefix in ("fixup", "skipinit"):  # zero branches: the second block of each stage is a no-op
        assert stats[1::2] == stats[0::2]


def test_baselines_train_one_step():
    """Every baseline is differentiable end to end and its loss is finite."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for prefix in BASELINES:
        model = normfree.create_model(f"{prefix}_cifar_resnet20", width=0.5)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        assert math.isfinite(loss.item()), prefix
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad), prefix


@pytest.mark.parametrize("prefix", ["nf", "bn", *BASELINES])
def test_fast_path_equals_plain_path_for_every_variant(prefix):
    """The folded fast path computes the same function for every baseline (Fixup's post-sum act too)."""
    from normfree.models.blocks import set_fast_path
    torch.manual_seed(0)
    m = normfree.create_model(f"{prefix}_cifar_resnet20", width=0.5).eval()
    for p in m.parameters():  # move zero-initialized gains/branches off zero so every path matters
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        fast = m(x)
        slow = set_fast_path(m, False)(x)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-6)
