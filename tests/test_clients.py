"""The clients users plug a model into: ONNX (legacy and dynamo exporters, run in ONNX Runtime),
torch.export and torch.fx tracing, backbone use (features_only, torchvision's layer-name contract),
timm's model surface and names, and building on the meta device."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import normfree
from normfree.errors import ModelOptionError, ModelSpecError, NormfreeError
from normfree.layers.conv import AvgPoolSame, MaxPoolSame, SamePadConv2d, same_pad_amounts
from normfree.train.optim import param_groups

TINY = {"widths": [16, 16, 32, 32], "depths": [1, 1, 1, 1], "num_classes": 5}


def tiny_regnet(**kw) -> nn.Module:
    torch.manual_seed(0)
    model = normfree.create_model("nf_regnet_b0", **{**TINY, **kw})
    with torch.no_grad():  # non-zero skip gains, so the residual branches reach the output
        for b in model.blocks():
            b.skip_gain.fill_(0.5)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------- TF-SAME padding under tracers

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


# ---------------------------------------------------------------- ONNX

def _onnx_runs(model: nn.Module, path, sizes, **export_kw) -> list[float]:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(path), input_names=["x"], **export_kw)
    sess = ort.InferenceSession(str(path))
    errs = []
    for n, h, w in sizes:
        x = torch.randn(n, 3, h, w)
        with torch.no_grad():
            ref = model(x)
        out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
        errs.append(rel_err(out, ref))
    return errs


SIZES = [(2, 64, 64), (3, 45, 51), (1, 33, 32), (2, 97, 71)]


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_onnx_legacy_exporter_refuses_same_padding(tmp_path, form):
    """The legacy (TorchScript) exporter would bake the SAME padding of the traced size into a graph
    declared dynamic in H/W (silently wrong elsewhere): it is refused, naming the exporter to use."""
    model = tiny_regnet().eval()
    model = normfree.deploy(model) if form == "deploy" else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation noise
        with pytest.raises(NormfreeError, match="dynamo=True"):
            torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(tmp_path / "m.onnx"), dynamo=False,
                              input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})


@pytest.mark.slow
@pytest.mark.xfail(reason="open: onnxruntime 1.32 returns NaN for this graph at every size, the traced "
                          "one included, though torch.export of the same model is exact; not yet "
                          "located", strict=False)
@pytest.mark.parametrize("form", ["train", "deploy"])
def test_onnx_dynamo_exporter_dynamic_hw_is_correct_at_odd_sizes(tmp_path, form):
    """The dynamo exporter keeps the SAME arithmetic symbolic: one graph, right at every size
    (float32: relative error < 1e-4)."""
    model = tiny_regnet().eval()
    model = normfree.deploy(model) if form == "deploy" else model
    dims = {0: torch.export.Dim("N"), 2: torch.export.Dim("H", min=64, max=512),
            3: torch.export.Dim("W", min=64, max=512)}
    errs = _onnx_runs(model, tmp_path / "m.onnx", [(2, 64, 64), (3, 65, 71), (1, 97, 80)], dynamo=True,
                      dynamic_shapes=(dims,))
    assert max(errs) < 1e-4, errs


# ---------------------------------------------------------------- torch.fx

@pytest.mark.parametrize("form", ["train", "deploy"])
def test_fx_symbolic_trace_matches_eager(form):
    model = tiny_regnet(stochdepth_rate=0.2).eval()
    model = normfree.deploy(model) if form == "deploy" else model
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 45, 51)  # odd sizes: SAME padding is computed at run time, not traced in
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_fx_trace_in_training_mode_keeps_stochastic_depth_and_gradients():
    model = tiny_regnet(stochdepth_rate=0.5).train()
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(4, 3, 40, 40)
    torch.manual_seed(1)
    ref = model(x)
    torch.manual_seed(1)
    out = gm(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out.sum().backward()
    assert model.stem.conv.weight.grad is not None


# ---------------------------------------------------------------- backbone use

def _intermediate_layer_getter(model: nn.Module, return_layers: dict[str, str], x: torch.Tensor) -> dict:
    """torchvision.models._utils.IntermediateLayerGetter's contract (torchvision cannot be installed
    beside this torch): return_layers must name direct children; children run in order."""
    names = [n for n, _ in model.named_children()]
    if not set(return_layers).issubset(names):
        raise ValueError("return_layers are not present in model")
    out = {}
    for name, module in model.named_children():
        x = module(x)
        if name in return_layers:
            out[return_layers[name]] = x
    return out


def test_features_only_maps_match_forward_intermediates_and_feature_info():
    net = tiny_regnet().eval()
    feats = normfree.create_model("nf_regnet_b0", features_only=True, **TINY)
    feats.load_state_dict({k.replace("stages.", "stages_", 1): v for k, v in net.state_dict().items()
                           if not k.startswith("fc.")})
    x = torch.randn(2, 3, 64, 64)
    maps = feats.eval()(x)
    ref = net.forward_intermediates(x)
    assert len(maps) == len(ref) == len(feats.feature_info)
    for m, r in zip(maps, ref):
        torch.testing.assert_close(m, r, rtol=0, atol=0)
    assert feats.feature_info.channels() == [m.shape[1] for m in maps]
    assert feats.feature_info.reduction() == [64 // m.shape[-1] for m in maps]
    assert not any(n.startswith("fc") for n, _ in feats.named_parameters())


def test_features_only_out_indices_every_parameter_gets_a_gradient():
    """No classifier and nothing after the last requested map: DDP would find no unused parameter."""
    feats = normfree.create_model("nf_regnet_b0", features_only=True, out_indices=(1, 3), **TINY)
    assert feats.feature_info.reduction() == [4, 16]
    maps = feats(torch.randn(2, 3, 64, 64))
    assert [m.shape[1] for m in maps] == feats.feature_info.channels()
    sum(m.square().mean() for m in maps).backward()
    unused = [n for n, p in feats.named_parameters() if p.grad is None]
    assert unused == []


def test_feature_info_names_are_accepted_by_torchvision_layer_getter():
    feats = normfree.create_model("nf_regnet_b0", features_only=True, out_indices=(1, 2, 4), **TINY)
    return_layers = {name: str(i) for i, name in enumerate(feats.feature_info.module_name())}
    x = torch.randn(1, 3, 64, 64)
    got = _intermediate_layer_getter(feats, return_layers, x)
    for i, m in enumerate(feats(x)):
        torch.testing.assert_close(got[str(i)], m, rtol=0, atol=0)
    # the full network's names are module paths (create_feature_extractor's), not direct children
    net = tiny_regnet()
    assert {i["module"] for i in net.feature_info} <= {n for n, _ in net.named_modules()}


def test_out_indices_errors():
    with pytest.raises(ModelOptionError, match="features_only"):
        normfree.create_model("nf_regnet_b0", out_indices=(1,), **TINY)
    with pytest.raises(ModelSpecError, match="out_indices"):
        normfree.create_model("nf_regnet_b0", features_only=True, out_indices=(1, 9), **TINY)


# ---------------------------------------------------------------- timm surface

def test_timm_head_split_and_cfg():
    model = tiny_regnet().eval()
    x = torch.randn(2, 3, 40, 40)
    feats = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(feats), model(x), rtol=0, atol=0)
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(model.fc(pooled), model(x), rtol=0, atol=0)
    assert model.default_cfg is model.pretrained_cfg


def test_no_weight_decay_is_the_trainers_rule():
    model = tiny_regnet()
    plain = {id(p) for p in param_groups(model, 1e-4)[1]["params"]}
    names = model.no_weight_decay()
    assert {n for n, p in model.named_parameters() if id(p) in plain} == names
    assert any(n.endswith("skip_gain") for n in names) and not any(n.endswith(".weight") and "conv" in n
                                                                   for n in names)


@pytest.mark.parametrize("coarse", [False, True])
def test_group_matcher_covers_every_parameter_but_the_classifier(coarse):
    import re

    model = tiny_regnet()
    spec = model.group_matcher(coarse)
    patterns = [spec["stem"]] + [p for p, _ in spec["blocks"]]
    for name, _ in model.named_parameters():
        hit = any(re.match(p, name) for p in patterns)
        assert hit != name.startswith("fc."), name


def test_timm_names_are_aliases():
    torch.manual_seed(0)
    a = normfree.create_model("nf_regnet_b0", drop_path_rate=0.3, **TINY)
    assert [b.drop_path.rate for b in a.blocks()] == pytest.approx([0.3 * i / 4 for i in range(4)])
    with pytest.raises(ModelOptionError, match="pass one"):
        normfree.create_model("nf_regnet_b0", drop_path_rate=0.3, stochdepth_rate=0.1, **TINY)
    with pytest.raises(ModelOptionError, match="stochdepth_rate"):  # the typo hint names the right option
        normfree.create_model("nf_regnet_b0", stochdepth_rat=0.1, **TINY)
    tiny_f0 = {"widths": [256, 256, 256, 256], "depths": [1, 1, 1, 1], "num_classes": 3}
    torch.manual_seed(0)
    dm = normfree.create_model("dm_nfnet_f0", **tiny_f0)
    torch.manual_seed(0)
    ours = normfree.create_model("nfnet_f0", **tiny_f0)
    assert dm.model_name == "nfnet_f0"
    for (k, v), (k2, v2) in zip(dm.state_dict().items(), ours.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


# ---------------------------------------------------------------- meta device

def test_meta_build_to_empty_init_weights_matches_a_fresh_model():
    torch.manual_seed(0)
    fresh = normfree.create_model("nf_regnet_b0", **TINY)
    meta = normfree.create_model("nf_regnet_b0", device="meta", **TINY)
    assert all(p.is_meta for p in meta.parameters())
    torch.manual_seed(0)
    meta.to_empty(device="cpu").init_weights()
    for (k, v), (_, ref) in zip(meta.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(v, ref, rtol=0, atol=0, msg=k)


def test_meta_forward_backward_and_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    meta = normfree.create_model("nf_regnet_b0", device="meta", **TINY)
    x = torch.randn(2, 3, 64, 64, device="meta")
    meta(x).sum().backward()
    assert meta.stem.conv.weight.grad.is_meta
    with FlopCounterMode(display=False) as counter:
        meta(x)
    cpu = normfree.create_model("nf_regnet_b0", **TINY)
    with FlopCounterMode(display=False) as ref:
        cpu(torch.randn(2, 3, 64, 64))
    assert counter.get_total_flops() == ref.get_total_flops() > 0
