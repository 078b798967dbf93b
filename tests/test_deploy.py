import pytest
import torch
from test_speed import VARIANTS, _build

import normfree
from normfree.layers import GammaAct, ScaledStdConv2d


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("key", VARIANTS)
def test_deploy_logits_match_training_form(key):
    model = _build(key)
    x = torch.randn(3, 3, 35, 35)  # odd size: asymmetric TF-SAME padding on strided convs
    with torch.no_grad():
        model(x * 2 + 0.5)  # non-trivial BatchNorm running statistics for the BN twin
    model.eval()
    for b in model.blocks():
        b.drop_path.rate = 0.3  # irrelevant in eval; deploy must not depend on it
    types = [type(m) for m in model.modules()]
    dep = normfree.deploy(model)
    with torch.no_grad():
        assert _max_rel(dep(x), model(x)) < 1e-5
        torch.testing.assert_close(model.fuse()(x), dep(x), rtol=0, atol=0)  # the method form
    assert [type(m) for m in model.modules()] == types  # the source model is left as it was
    assert not any(isinstance(m, ScaledStdConv2d) for m in dep.modules())
    assert all(m.factor == 1.0 for m in dep.modules() if isinstance(m, GammaAct))
    assert all(b.skip_gain is None and b.alpha == 1.0 for b in dep.blocks())
    assert not any(p.requires_grad for p in dep.parameters())
    bns = [m for m in dep.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # Only the BNs on the residual stream (each block's pre-activation and the final one) remain.
    assert len(bns) == (len(dep.blocks()) + 1 if key.startswith("bn_") else 0)


def test_deployed_model_compiles_without_graph_breaks():
    torch._dynamo.reset()
    dep = normfree.deploy(_build("se_timm_avgpool"))
    compiled = torch.compile(dep, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), dep(x))


@pytest.mark.parametrize("form", ["deploy", "training"])
def test_onnx_export_matches_onnxruntime(tmp_path, form):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = _build("nf_resnet26").eval()
    if form == "deploy":
        model = normfree.deploy(model)
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert _max_rel(torch.from_numpy(out), model(x)) < 1e-4
