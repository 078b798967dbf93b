"""Proxy Norm, GradInit and AutoInit: each tested against its defining property."""
import copy
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normfree
from normfree.analysis import signal_propagation
from normfree.analysis.moments import Moments, gaussian_moments
from normfree.errors import ConfigError, ModelSpecError
from normfree.init import autoinit, gradinit
from normfree.init.gradinit import first_step
from normfree.layers import GAMMAS, GammaAct, get_activation
from normfree.layers.proxynorm import GroupProxyNormAct, LayerProxyNormAct, gaussian_quantiles
from normfree.train.config import TrainConfig
from normfree.train.init import parse_init
from test_train_loop import one_thread  # noqa: F401  (autouse: one intra-op thread for these tiny tensors)


def relu_gaussian_moments(mean, std):
    """Closed form of E, Var of relu(Y), Y ~ N(mean, std²) (an independent reference)."""
    a = mean / std
    cdf = 0.5 * (1 + torch.erf(a / math.sqrt(2)))
    pdf = torch.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    m1 = mean * cdf + std * pdf
    m2 = (mean**2 + std**2) * cdf + mean * std * pdf
    return m1, m2 - m1**2


# ---- Proxy Norm ----------------------------------------------------------------------------------
def test_proxy_sample_is_a_standard_gaussian():
    q = gaussian_quantiles(256, torch.float64)
    assert abs(q.mean().item()) < 1e-12 and q.var(unbiased=False).item() == pytest.approx(1.0, abs=0.02)
    assert torch.all(q[1:] > q[:-1])


@pytest.mark.parametrize("cls, groups", [(LayerProxyNormAct, 1), (GroupProxyNormAct, 32)])
def test_proxy_norm_matches_its_formula_in_float64(cls, groups):
    """Against a from-scratch float64 reference: group statistics over (C/G, H, W) per example, the
    proxy as N(0, 1) quantiles at (i + ½)/n (torch.distributions, not erfinv), its *biased* moments,
    then γ̃·(φ(y) − μ)/sqrt(σ² + ε̃) + β̃. Exact up to float64 rounding (1e-10)."""
    torch.manual_seed(0)
    c, n = 64, 256
    layer = cls(c, dtype=torch.float64)
    with torch.no_grad():
        for t in (layer.weight, layer.tilde_weight):
            t.uniform_(0.5, 2.0)
        for t in (layer.bias, layer.tilde_bias):
            t.uniform_(-1.0, 1.0)
    assert layer.groups == groups
    x = torch.randn(3, c, 5, 5, dtype=torch.float64) * 2 + 0.7
    g = x.view(3, groups, -1)
    xn = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + layer.eps))
    y = torch.relu(xn.view_as(x) * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1))
    q = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    proxy = torch.relu(layer.weight[:, None] * q + layer.bias[:, None])
    mu, var = proxy.mean(1), ((proxy - proxy.mean(1, keepdim=True)) ** 2).sum(1) / n
    want = (layer.tilde_weight.view(1, -1, 1, 1) * (y - mu.view(1, -1, 1, 1)) / torch.sqrt(var + 0.03).view(1, -1, 1, 1)
            + layer.tilde_bias.view(1, -1, 1, 1))
    with torch.no_grad():
        assert torch.allclose(layer(x), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [LayerProxyNormAct, GroupProxyNormAct])
def test_proxy_norm_post_activation_statistics_match_the_proxy(cls):
    """Gaussian input: per channel, φ(γ·norm(x)+β) has the proxy's mean/variance (closed form for ReLU),
    so the layer's output is standardized: channel means ≈ β̃ = 0, variances ≈ var/(var + ε̃)."""
    torch.manual_seed(0)
    layer = cls(16)
    with torch.no_grad():  # away from the trivial γ = 1, β = 0
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.uniform_(-1.0, 1.0)
    x = torch.randn(64, 16, 16, 16) * 3 + 1.5  # any scale and offset: the norm removes them
    z = layer.pre_standardization(x)
    m_ref, v_ref = relu_gaussian_moments(layer.bias.detach().double(), layer.weight.detach().double())
    m_proxy, v_proxy = layer.proxy_moments()
    assert torch.allclose(m_proxy.double(), m_ref, rtol=0.02, atol=0.01)  # 256 quantiles vs exact
    assert torch.allclose(v_proxy.double(), v_ref, rtol=0.03, atol=0.01)
    # the data (16384 values per channel) agree with the proxy to sampling error
    assert torch.allclose(z.mean(dim=(0, 2, 3)).double(), m_ref, atol=0.04)
    assert torch.allclose(z.var(dim=(0, 2, 3)).double(), v_ref, rtol=0.08, atol=0.02)
    out = layer(x)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 0.05
    expected = (v_ref / (v_ref + layer.proxy_eps)).float()
    assert torch.allclose(out.var(dim=(0, 2, 3)), expected, rtol=0.08)


@pytest.mark.parametrize("prefix", ["lnpn", "gnpn", "ln", "gn"])
def test_proxy_norm_nets_are_batch_independent(prefix):
    """Each example's output is the same alone (batch 1) as in a batch, in training mode."""
    torch.manual_seed(0)
    model = normfree.create_model(f"{prefix}_cifar_resnet20", width=0.5).train()
    for p in model.parameters():  # a zero classifier would make every output equal
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(4)])
    assert torch.allclose(batched, alone, rtol=1e-4, atol=1e-6)


def test_batchnorm_net_is_not_batch_independent():
    """Control for the test above: the same check catches a batch-dependent net."""
    torch.manual_seed(0)
    model = normfree.create_model("bn_cifar_resnet20", width=0.5, fc_init_std=0.1).train()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model(x), torch.cat([model(x[:2]), model(x[2:])]), atol=1e-3)


def test_proxy_norm_nets_have_the_extra_affine_and_the_ablation_twins_do_not():
    pn = normfree.create_model("gnpn_cifar_resnet20")
    gn = normfree.create_model("gn_cifar_resnet20")
    layer = pn.stages[1][0].preact
    assert isinstance(layer, GroupProxyNormAct) and layer.groups == 8  # 8 groups of 2 channels
    names = {n.rsplit(".", 1)[-1] for n, _ in pn.named_parameters()}
    assert {"tilde_weight", "tilde_bias"} <= names
    assert not any("tilde" in n for n, _ in gn.named_parameters())
    assert isinstance(normfree.create_model("lnpn_cifar_resnet20").final, LayerProxyNormAct)


# ---- AutoInit ------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["relu", "silu", "gelu", "tanh", "elu"])
def test_activation_moments_reproduce_the_gamma_table(act):
    """γ = 1/std of the activation on N(0, 1): the official table is 0.01–0.09 % high (MC)."""
    _, var = gaussian_moments(get_activation(act)[0], torch.zeros(1), torch.ones(1))
    assert 1 / math.sqrt(var.item()) == pytest.approx(GAMMAS[act], rel=1e-3)


def test_activation_moments_match_relu_closed_form():
    mean, var = torch.tensor([-1.0, 0.0, 0.7, 2.0]), torch.tensor([0.3, 1.0, 2.0, 0.5])
    m, v = gaussian_moments(torch.relu, mean, var)
    m_ref, v_ref = relu_gaussian_moments(mean.double(), var.double().sqrt())
    assert torch.allclose(m, m_ref, rtol=1e-4) and torch.allclose(v, v_ref, rtol=1e-4)


def test_autoinit_gives_unit_block_variance_on_gaussian_input():
    """The plain He-initialized net's SPP explodes; after AutoInit every block output (and branch) is
    ≈ 1, as predicted. Tolerance: the mean-field prediction ignores zero padding, which adds a few %
    per layer on the 8×8 maps of the last stage (measured up to 1.24 here)."""
    torch.manual_seed(0)
    model = normfree.create_model("autoinit_cifar_resnet20")
    before = signal_propagation(model, input_shape=(32, 3, 32, 32))
    assert before.var[-1] > 10
    report = autoinit(model)
    after = signal_propagation(model, input_shape=(32, 3, 32, 32))
    assert report.block_var == pytest.approx([1.0] * 9)
    assert all(0.85 < v < 1.3 for v in after.var), after.var
    assert all(0.85 < v < 1.45 for v in after.res_var), after.res_var
    assert after.stem_var == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_autoinit_without_weighted_sum_matches_its_prediction(alpha):
    """On an NF net (no weighted sum) the stream grows as predicted, 1 + k·α² within a stage (each
    branch ends at unit variance, times α). Its zero-sum WS weights keep channel means at 0, so zero
    padding can only remove variance: measured ≤ predicted, by 6 % (32×32 maps) to 25 % (8×8 maps,
    where 44 % of positions touch the border)."""
    torch.manual_seed(0)
    model = normfree.create_model("nf_cifar_resnet20", skipinit_gain=1.0, alpha=alpha)
    report = autoinit(model)
    assert report.block_var == pytest.approx([1 + k * alpha**2 for k in (1, 2, 3)] * 3, rel=1e-6)
    measured = signal_propagation(model, input_shape=(32, 3, 32, 32)).var
    ratios = [m / p for m, p in zip(measured, report.block_var)]
    assert all(0.7 < r < 1.02 for r in ratios), ratios
    assert all(ratios[i] > 0.85 for i in range(3))


def test_autoinit_scales_ws_gains_and_keeps_zero_weights():
    """WS re-standardizes W, so the gain carries every scale: W is untouched, gain = scale · gain₀. Scaled
    WS already keeps unit variance, so the scales are ≈ 1 on N(0, 1) input; input of variance 4 makes
    the stem's 1/2."""
    torch.manual_seed(0)
    model = normfree.create_model("nf_cifar_resnet20", width=0.5, fc_init_std=0.0)
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    report = autoinit(model, Moments.standard(3).scaled(2.0))  # N(0, 4) channels
    assert report.scales["stem.conv.gain"] == pytest.approx(0.5, rel=1e-3)
    assert not model.fc.weight.any() and "fc.weight" not in report.scales  # a zero classifier stays zero
    params = dict(model.named_parameters())
    gains = [n for n in report.scales if n.endswith(".gain")]
    assert len(gains) == 22  # stem, 3 shortcuts, 18 branch convs
    for n in gains:
        weight = n[:-len("gain")] + "weight"
        assert torch.equal(params[weight], before[weight])
        assert torch.allclose(params[n], before[n] * report.scales[n], rtol=1e-6)


def test_autoinit_accounts_for_biases():
    """A bias shifts the next activation's input: relu(N(0.5, 1)) has twice the second moment of
    relu(N(0, 1)), so the next conv's scale must use the shifted moments to land at unit variance."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), GammaAct("relu"), nn.Conv2d(32, 32, 3, bias=False))
    with torch.no_grad():
        model[0].bias.fill_(0.5)
    autoinit(model)
    with torch.no_grad():
        out = model(torch.randn(256, 3, 12, 12))
    assert out.var(dim=(0, 2, 3)).mean().item() == pytest.approx(1.0, rel=0.1)


def test_autoinit_names_unsupported_layers_and_changes_nothing():
    model = normfree.create_model("bn_cifar_resnet20", width=0.5)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ModelSpecError, match=r"BatchNorm2d.*stages\.0\.0\.preact"):
        autoinit(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ModelSpecError, match="SqueezeExcite"):
        autoinit(normfree.create_model("nf_cifar_resnet20", width=0.25, use_se=True))


# ---- GradInit ------------------------------------------------------------------------------------
def toy_data(n_batches, batch=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(3 * 8 * 8, 10, generator=gen)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, 3, 8, 8, generator=gen)
        out.append((x, (x.flatten(1) @ w).argmax(1)))
    return out


def tiny_mlp():
    """A model GradInit can step exactly (no padding, no stochastic layers) for the toy data's 3×8×8 images."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, 10))


def one_step_gain(model, s0, s1, eta, bound, kind="sgd"):
    """Loss on S₁ before and after one simulated step on S₀, the step's gradient clipped to ‖g‖ ≤ bound."""
    params = dict(model.named_parameters())
    loss0 = F.cross_entropy(torch.func.functional_call(model, params, (s0[0],)), s0[1])
    grads = torch.autograd.grad(loss0, list(params.values()))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)) if kind == "sgd" else sum(g.abs().sum() for g in grads)
    grads = [g * min(1.0, bound / float(norm)) for g in grads]
    step = {n: p - eta * d for (n, p), d in zip(params.items(), first_step(grads, kind))}
    with torch.no_grad():
        before = F.cross_entropy(model(s1[0]), s1[1])
        after = F.cross_entropy(torch.func.functional_call(model, step, (s1[0],)), s1[1])
    return float(before), float(after)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_gradinit_first_step_lowers_the_loss_more_than_the_unscaled_model(kind):
    """A plain BN-free net (He init, no skip gains, a classifier of std 0.1 whose logits start too
    large): after GradInit, one step under the same gradient bound leaves a lower held-out loss (GradInit's
    objective, averaged over 4 held-out batch pairs) than the same step from the unscaled init. (On
    this toy task the best reachable loss is about ln 10; with a small classifier init the unscaled
    model starts there too, and the comparison is noise.)"""
    torch.manual_seed(0)
    model = normfree.create_model("gradinit_cifar_resnet20", width=0.25, fc_init_std=0.1)
    reference = copy.deepcopy(model)
    data = toy_data(48)
    eta, bound = (0.1, 1.0) if kind == "sgd" else (1e-3, 50.0)
    result = gradinit(model, data[:40], kind, iters=20, eta=eta, grad_bound=bound, lr=0.05, log_every=100)
    assert result.iterations == 20 and len(result.scales) == len(list(model.parameters()))
    assert all(s >= 1e-2 for s in result.scales.values())
    assert any(abs(s - 1) > 0.05 for s in result.scales.values())
    for n, p in model.named_parameters():  # the model holds scale · original weight
        assert torch.allclose(p, dict(reference.named_parameters())[n] * result.scales[n])
    first = result.history[0]  # at α = 1, recomputed independently: ‖g‖, then the post-step loss or ‖g‖
    params = dict(reference.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(reference(data[0][0]), data[0][1]), list(params.values()))
    norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)) if kind == "sgd" else sum(g.abs().sum() for g in grads))
    assert first["grad_norm"] == pytest.approx(norm, rel=1e-5) and first["inside_bound"] == (norm <= bound)
    want = one_step_gain(reference, data[0], data[1], eta, math.inf, kind)[1] if norm <= bound else norm
    assert first["objective"] == pytest.approx(want, rel=1e-5)
    pairs = [(data[40 + k], data[44 + k]) for k in range(4)]
    after_ref = sum(one_step_gain(reference, s0, s1, eta, bound, kind)[1] for s0, s1 in pairs) / 4
    after_new = sum(one_step_gain(model, s0, s1, eta, bound, kind)[1] for s0, s1 in pairs) / 4
    assert after_new < after_ref - 0.05, (after_ref, after_new)
    assert result.forward_passes >= 20 and result.backward_passes == 3 * 20


def test_gradinit_shrinks_a_gradient_over_the_bound():
    torch.manual_seed(0)
    model = normfree.create_model("gradinit_cifar_resnet20", width=0.25, fc_init_std=0.01)
    lines = []
    result = gradinit(model, toy_data(20), "sgd", iters=10, grad_bound=1e-3, lr=0.05, log_every=5,
                      logger=lines.append)
    norms = [h["grad_norm"] for h in result.history]
    assert not any(h["inside_bound"] for h in result.history) and norms[-1] < 0.7 * norms[0]
    assert result.forward_passes == 10  # over the bound: no post-step forward
    assert any("over the bound" in s for s in lines) and lines[-1].startswith("gradinit done")


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_gradinit_objective_inside_the_bound_is_the_loss_after_a_real_optimizer_step(kind):
    """Inside the bound, iteration 1's objective is the S₁ loss after one step of torch.optim.SGD / Adam
    (lr η) on S₀ from the initial weights: the simulated step has the optimizer's sign, direction and
    batches. Float32, recomputed by a different route (autograd + optimizer vs functional_call): 1e-5."""
    torch.manual_seed(0)
    model = tiny_mlp()
    reference = copy.deepcopy(model)
    (x0, y0), (x1, y1) = data = toy_data(2)
    eta = 0.5 if kind == "sgd" else 0.01
    result = gradinit(model, data, kind, iters=1, eta=eta, grad_bound=1e9, logger=lambda s: None)
    assert result.history[0]["inside_bound"]
    opt = (torch.optim.SGD(reference.parameters(), lr=eta) if kind == "sgd"
           else torch.optim.Adam(reference.parameters(), lr=eta, eps=1e-8))
    F.cross_entropy(reference(x0), y0).backward()
    opt.step()
    with torch.no_grad():
        want = float(F.cross_entropy(reference(x1), y1))
        unstepped = float(F.cross_entropy(model(x1), y1))
    assert result.history[0]["objective"] == pytest.approx(want, rel=1e-5)
    assert abs(want - unstepped) > 1e-3  # the step is large enough for a wrong one to show


def test_gradinit_keeps_every_scale_at_or_above_min_scale():
    """Over a tiny bound the scales shrink fast (Adam lr 1): the clamp holds them at min_scale."""
    torch.manual_seed(0)
    model = tiny_mlp()
    result = gradinit(model, toy_data(6), "sgd", iters=3, grad_bound=1e-9, lr=1.0, min_scale=0.3,
                      logger=lambda s: None)
    assert min(result.scales.values()) == pytest.approx(0.3)


def test_gradinit_stops_when_data_runs_out_and_rejects_bad_options():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    assert gradinit(model, toy_data(3), "sgd", iters=5, logger=lambda s: None).iterations == 1
    with pytest.raises(ConfigError):
        gradinit(model, toy_data(2), "lamb")
    for bad, needle in [({"iters": 0}, "GradInit iters = 0"), ({"iters": "x"}, "GradInit iters = 'x'"),
                        ({"min_scale": 0}, "GradInit min_scale = 0"), ({"eta": -1.0}, "GradInit eta = -1.0"),
                        ({"grad_bound": 0}, "GradInit grad_bound = 0"), ({"lr": float("inf")}, "GradInit lr = inf")]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            gradinit(model, toy_data(2), "sgd", **bad)


# ---- selection from the trainer ------------------------------------------------------------------
def test_parse_init_resolves_auto_from_the_baseline():
    assert parse_init("auto", "gradinit_cifar_resnet20") == ("gradinit", {})
    assert parse_init("auto", "autoinit_resnet50") == ("autoinit", {})
    assert parse_init("auto", "bn_cifar_resnet20") == ("default", {})
    assert parse_init("gradinit:iters=3,optimizer=adam", "nf_cifar_resnet20") == (
        "gradinit", {"iters": 3, "optimizer": "adam"})
    assert parse_init("gradinit:min_scale=1,batch=8.0", "x")[1] == {"min_scale": 1.0, "batch": 8}
    for bad in ("lsuv", "autoinit:iters=3", "gradinit:steps=3"):
        with pytest.raises(ConfigError):
            parse_init(bad, "nf_cifar_resnet20")
    for bad, needle in [("iters=abc", "iters = 'abc': must be an integer >= 1"), ("iters=0", "iters = 0"),
                        ("min_scale=2", "min_scale = 2: must be a finite number > 0 and <= 1"),
                        ("lr=-1", "lr = -1"), ("eta=0", "eta = 0"), ("grad_bound=nan", "grad_bound = 'nan'"),
                        ("batch=0", "batch = 0"), ("optimizer=lamb", "optimizer = 'lamb'")]:
        with pytest.raises(ConfigError, match=re.escape(f"--init gradinit:{needle}")):
            parse_init(f"gradinit:{bad}", "nf_cifar_resnet20")


def test_train_config_checks_the_init_before_any_work():
    with pytest.raises(ConfigError, match="init must be one of"):
        TrainConfig(init="lsuv")
    with pytest.raises(ConfigError, match="init .* must be a non-empty string"):
        TrainConfig(init=3)
    with pytest.raises(ConfigError, match=re.escape("--init gradinit:iters = -2")):
        TrainConfig(init="gradinit:iters=-2")


@pytest.mark.parametrize("init", ["gradinit:iters=2,batch=16", "autoinit"])
def test_trainer_applies_the_init_and_records_its_cost(tmp_path, init):
    from normfree.train import TrainConfig, Trainer

    cfg = TrainConfig(model="gradinit_cifar_resnet20", data="synthetic", out_dir=str(tmp_path),
                      model_kwargs={"width": 0.25}, train_subset=64, test_subset=32, epochs=1,
                      batch_size=32, device="cpu", init=init, log_every=1)
    trainer = Trainer(cfg)
    info = json.loads((tmp_path / "init.json").read_text())
    assert info["method"] == init.split(":")[0] and info == json.loads(json.dumps(trainer.init_info))
    if info["method"] == "gradinit":
        assert info["iterations"] == 2 and info["forward_passes"] >= 2 and info["backward_passes"] == 6
    else:
        assert info["forward_passes"] == 0 and info["scales"]["stem.conv.weight"] > 0
    assert math.isfinite(trainer.fit()["train_loss"])


@pytest.mark.parametrize("name", ["nf_cifar_resnet20", "gradinit_cifar_resnet20"])
def test_gradinit_hypergradient_matches_finite_differences(name):
    """d(post-step loss)/d(scale) through the double backward, against central differences in float64;
    on the NF net this differentiates the fast Scaled-WS Function's backward (its batch-norm backward
    has an exact derivative, which includes the weight statistics' dependence on W)."""
    torch.manual_seed(0)
    gains = {"skipinit_gain": 1.0, "stochdepth_rate": 0.0} if name.startswith("nf") else {}
    model = normfree.create_model(name, width=0.25, fc_init_std=0.1, **gains).double()
    (x0, y0), (x1, y1) = [(x.double(), y) for x, y in toy_data(2, batch=4)]
    x0, x1 = F.interpolate(x0, size=16), F.interpolate(x1, size=16)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    key = "stages.0.0.branch.conv0.weight"

    def objective(delta):
        scale = torch.tensor(1.0 + delta, dtype=torch.float64, requires_grad=True)
        params = {n: scale * b if n == key else b.clone().requires_grad_(True) for n, b in base.items()}
        loss0 = F.cross_entropy(torch.func.functional_call(model, params, (x0,)), y0)
        grads = torch.autograd.grad(loss0, list(params.values()), create_graph=True)
        stepped = {n: params[n] - 0.1 * g for n, g in zip(params, grads)}
        return F.cross_entropy(torch.func.functional_call(model, stepped, (x1,)), y1), scale

    value, scale = objective(0.0)
    (analytic,) = torch.autograd.grad(value, scale)
    eps = 1e-5
    numeric = (objective(eps)[0].item() - objective(-eps)[0].item()) / (2 * eps)
    assert abs(numeric) > 1e-4  # the scale matters (~1e-3 here), also for a WS conv (through the step)
    assert analytic.item() == pytest.approx(numeric, rel=1e-4)
