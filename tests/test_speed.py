import copy

import pytest
import torch

import normfree
from normfree.models.blocks import ResidualBlock, set_fast_path

# Every structural variant the folded path has to handle: SE last, avg-pool shortcut, timm WS (γ in
# the conv), plain convs, non-homogeneous activation, symmetric padding, stochastic depth.
VARIANTS = {
    "nf_resnet26": ("nf_resnet26", dict(width=0.25)),
    "se_timm_avgpool": ("nf_resnet26", dict(width=0.25, use_se=True, ws="timm",
                                            shortcut="avgpool_conv", padding="symmetric")),
    "cifar_gelu": ("nf_cifar_resnet20", dict(width=0.5, activation="gelu")),
    "cifar_plain_conv": ("nf_cifar_resnet20", dict(width=0.5, std_conv=False)),
    "bn_resnet26": ("bn_resnet26", dict(width=0.25)),
}


def _build(key: str) -> torch.nn.Module:
    name, kwargs = VARIANTS[key]
    kwargs = dict(kwargs, num_classes=7)
    if not name.startswith("bn_"):
        kwargs["skipinit_gain"] = 0.7  # a nonzero branch so folding errors would show
    torch.manual_seed(0)
    model = normfree.create_model(name, **kwargs)
    with torch.no_grad():  # move gains/biases off their init so every folded scalar matters
        for n, p in model.named_parameters():
            if n.endswith(("gain", "bias")):
                p.add_(torch.randn_like(p) * 0.1)
        model.fc.weight.normal_(0.0, 0.1)  # a zero-init classifier would make the logits constant
    return model


def _run(model: torch.nn.Module, x: torch.Tensor, seed: int = 1):
    torch.manual_seed(seed)  # same stochastic-depth masks on both paths
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("key", VARIANTS)
@pytest.mark.parametrize("stochdepth", [0.0, 0.5])
def test_folded_path_equals_unfolded_fp32(key, stochdepth):
    ref = _build(key)
    for b in ref.blocks():
        b.drop_path.rate = stochdepth
    fast = copy.deepcopy(ref)
    set_fast_path(ref, False)
    x = torch.randn(4, 3, 32, 32)
    out_ref, grads_ref = _run(ref.train(), x)
    out_fast, grads_fast = _run(fast.train(), x)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-6)
    assert grads_fast.keys() == grads_ref.keys()
    for n, g in grads_ref.items():
        torch.testing.assert_close(grads_fast[n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_fast_path_is_default_and_really_folds():
    """Folded: no elementwise multiply by β·γ or α·g over activations (count aten.mul on 4-D tensors)."""
    block = _build("nf_resnet26").stages[1][1]
    assert isinstance(block, ResidualBlock) and block.fast_path
    x = torch.randn(2, block.in_ch, 8, 8)

    def big_muls(fn):
        with torch.profiler.profile(record_shapes=True) as prof:
            fn(x)
        return sum(e.count for e in prof.key_averages(group_by_input_shape=True)
                   if e.key == "aten::mul" and any(len(s) == 4 and s[0] == 2 for s in e.input_shapes))

    with torch.no_grad():
        assert big_muls(block.forward_unfolded) >= 4  # preact, two inner γ, skip gain, α
        assert big_muls(block) == 0


def test_fast_path_is_an_explicit_switch_and_unfolded_restores_it():
    """The rule: ``fast_path`` alone decides; hooks on block internals fire only on the plain path."""
    from normfree.models.blocks import unfolded

    model = _build("nf_resnet26")
    block = model.stages[0][1]
    block.fast_path = False  # one block switched off by hand stays off after the context
    seen = []
    model.stages[1][1].branch.act1.register_forward_hook(lambda *_: seen.append(1))
    x = torch.randn(2, 3, 32, 32)
    model(x)
    assert seen == []  # folded: the activation module is not called
    with unfolded(model):
        assert not any(b.fast_path for b in model.blocks())
        model(x)
    assert seen == [1]
    assert [b.fast_path for b in model.blocks()] == [b is not block for b in model.blocks()]


@pytest.mark.parametrize("ws", ["official", "timm"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ws_function_matches_reference_and_gradcheck(ws, channels_last):
    from normfree.layers import ScaledStdConv2d
    from normfree.layers.conv import _ScaledWSFunction

    torch.manual_seed(0)
    conv = ScaledStdConv2d(3, 5, 3, ws=ws, gamma=1.7 if ws == "timm" else 1.0).double()
    with torch.no_grad():
        conv.gain.add_(torch.randn(5, dtype=torch.double) * 0.2)
        conv.weight[0] = 1e-4  # channel 0: variance below eps (official clamp) -> zero grad path
        conv.weight[1] += 0.3  # a channel with a large mean
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        assert not conv.weight.is_contiguous()
    scale = torch.tensor(0.8, dtype=torch.double, requires_grad=True)
    args = (conv.weight, conv.gain, scale, conv.fan_in, conv.eps, conv._ws_const)
    assert torch.autograd.gradcheck(lambda *a: _ScaledWSFunction.apply(*a)[0], args)
    fused = conv.standardized_weight(scale)
    ref = conv.standardized_weight_reference(scale)
    torch.testing.assert_close(fused, ref)
    up = torch.randn_like(ref)
    g_fused = torch.autograd.grad((fused * up).sum(), [conv.weight, conv.gain, scale])
    g_ref = torch.autograd.grad((ref * up).sum(), [conv.weight, conv.gain, scale])
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b)


def test_ws_statistics_stay_fp32_under_autocast():
    from normfree.layers import ScaledStdConv2d

    torch.manual_seed(0)
    conv = ScaledStdConv2d(64, 32, 3)
    with torch.no_grad():
        conv.weight.add_(0.05)  # a mean offset makes bf16 variance visibly wrong
        ref = conv.standardized_weight_reference()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = conv.standardized_weight()
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_mid_branch_se_block_folded_and_deployed(act):
    """SE in the middle of the branch (followed by an activation), avg-pool shortcut, stochastic depth."""
    from normfree.layers import LayerFactory
    from normfree.models import ConvSpec

    torch.manual_seed(0)
    block = ResidualBlock(8, [ConvSpec(6, 1), ConvSpec(6, 3, 2), ConvSpec(12, 1)],
                          LayerFactory(act=act), beta=0.9, alpha=0.3, se_hidden=3, se_after=1,
                          shortcut="avgpool_conv", drop_path_rate=0.5, skipinit_gain=0.8)
    ref = set_fast_path(copy.deepcopy(block), False)
    x = torch.randn(4, 8, 9, 9)
    outs, grads = [], []
    for m in (block, ref):
        torch.manual_seed(1)
        out = m(x)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append([p.grad for p in m.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(normfree.deploy(block)(x), block(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act", ["relu", "silu", "relu6"])
def test_models_with_inplace_activations_still_pickle(tmp_path, act):
    model = normfree.create_model("nf_cifar_resnet20", width=0.25, activation=act)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


@pytest.mark.parametrize("name", ["nf_resnet26", "bn_resnet26"])
def test_grad_checkpointing_same_gradients_less_memory(name):
    from normfree.bench import BenchConfig, make_step, step_peak_memory

    kw = dict(width=0.25, num_classes=7)
    if name.startswith("nf"):
        kw.update(stochdepth_rate=0.5, drop_rate=0.2, skipinit_gain=0.5)  # random layers must replay
    torch.manual_seed(0)
    plain = normfree.create_model(name, **kw)
    ckpt = copy.deepcopy(plain).set_grad_checkpointing(True)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    for m in (plain, ckpt):
        torch.manual_seed(1)
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=n)
    with torch.no_grad():  # inference ignores the flag
        torch.testing.assert_close(ckpt.eval()(x), plain.eval()(x))
    # Memory: a deep net (27 blocks) where block activations, not the stem, dominate the peak.
    deep = normfree.create_model(name.replace("resnet26", "cifar_resnet56"), width=0.25, num_classes=7)
    cfg = BenchConfig(mode="train", batch=16, size=32)
    peaks = [step_peak_memory(make_step(m, cfg)[0], torch.device("cpu"))
             for m in (deep, copy.deepcopy(deep).set_grad_checkpointing(True))]
    assert peaks[1] < 0.7 * peaks[0]


def test_nf_training_step_peak_memory_below_bn_twin():
    """The folded path keeps one tensor per activation and no stage output beyond its use (the speed target's
    memory target at small scale; counted by the same allocator trace as `normfree bench`)."""
    from normfree.bench import BenchConfig, make_step, step_peak_memory

    cfg = BenchConfig(mode="train", batch=8, size=64)
    peaks = {}
    for name in ("nf_resnet26", "bn_resnet26"):
        torch.manual_seed(0)
        model = normfree.create_model(name, width=0.5, num_classes=10)
        peaks[name] = step_peak_memory(make_step(model, cfg)[0], torch.device("cpu"))
    assert peaks["nf_resnet26"] < 0.85 * peaks["bn_resnet26"]
