import copy

import pytest
import torch
from test_speed import VARIANTS, _build

import normfree
from normfree.layers import GammaAct, ScaledStdConv2d
from normfree.models.blocks import set_fast_path

FP32_TOL = 1e-5  # folding rounds each weight once more: ~100 fp32 roundings (2^-24) per logit at most


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The textbook formulation (every scalar its own pass): independent of both folded forms."""
    with torch.no_grad():
        return set_fast_path(copy.deepcopy(model), False).eval()(x)


@pytest.mark.parametrize("key", VARIANTS)
def test_deploy_logits_match_training_form(key):
    model = _build(key)
    x = torch.randn(3, 3, 35, 35)  # odd size: asymmetric TF-SAME padding on strided convs
    with torch.no_grad():  # the BN twin's statistics and affine far from init, so a wrong fold shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    for b in model.blocks():
        b.drop_path.rate = 0.3  # irrelevant in eval; deploy must not depend on it
    types = [type(m) for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = _reference(model, x)
    dep = normfree.deploy(model)
    fused = model.fuse()  # the method form
    with torch.no_grad():
        if not key.startswith("bn_"):  # the residual branches carry signal: a dead branch would pass
            assert _max_rel(_reference(_zero_skip_gains(model), x), ref) > 0.01  # 1000x FP32_TOL
        assert _max_rel(ref[1:], ref[:1].expand_as(ref[1:])) > 0.01  # the logits depend on the input
        assert _max_rel(dep(x), ref) < FP32_TOL
        assert _max_rel(fused(x), ref) < FP32_TOL
    assert fused is not model and dep is not model
    assert [type(m) for m in model.modules()] == types  # the source model is left as it was
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(isinstance(m, ScaledStdConv2d) for m in dep.modules())
    assert all(m.factor == 1.0 for m in dep.modules() if isinstance(m, GammaAct))
    assert all(b.skip_gain is None and b.alpha == 1.0 for b in dep.blocks())
    assert all(b.drop_path.rate == 0.0 for b in dep.blocks())  # nothing random is left, even in train()
    assert not any(p.requires_grad for p in dep.parameters())
    bns = [m for m in dep.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # Only the BNs on the residual stream (each block's pre-activation and the final one) remain.
    assert len(bns) == (len(dep.blocks()) + 1 if key.startswith("bn_") else 0)


def _zero_skip_gains(model: torch.nn.Module) -> torch.nn.Module:
    dead = copy.deepcopy(model)
    with torch.no_grad():
        for b in dead.blocks():
            b.skip_gain.zero_()
    return dead


def test_deployed_model_compiles_without_graph_breaks():
    torch._dynamo.reset()
    model = _build("se_timm_avgpool").eval()
    dep = normfree.deploy(model)
    compiled = torch.compile(dep, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        assert _max_rel(compiled(x), _reference(model, x)) < FP32_TOL


@pytest.mark.parametrize("form", ["deploy", "training"])
def test_onnx_export_matches_onnxruntime(tmp_path, form):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    source = _build("nf_resnet26").eval()  # skip gains 0.7: live branches
    model = normfree.deploy(source) if form == "deploy" else source
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy()})
    # onnxruntime's fp32 kernels (other conv algorithms, fused ops): a few hundred roundings
    assert _max_rel(torch.from_numpy(out), _reference(source, x)) < 1e-4
    x2 = torch.randn(2, 3, 64, 64)  # a new input: the graph computes, it did not fold the example in
    (out2,) = session.run(None, {"x": x2.numpy()})
    assert _max_rel(torch.from_numpy(out2), _reference(source, x2)) < 1e-4
