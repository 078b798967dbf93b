"""ONNX Runtime on exported normfree models: the dynamo exporter (torch.export) for TF-SAME models, in
training and deploy form, one graph with dynamic batch, H and W, right at odd sizes; the legacy
(TorchScript) exporter for symmetric-padded models, and its refusal of TF-SAME padding."""
from __future__ import annotations

import warnings

import pytest
import torch

import normfree
from normfree.errors import NormfreeError

from .tiny import live, rel_err, tiny_regnet

pytestmark = pytest.mark.usefixtures("one_thread")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

# fp32 end to end: both runtimes accumulate a few hundred roundings of 2^-24 in other orders (~1e-6).
TOL = 1e-5


def _form(model: torch.nn.Module, form: str) -> torch.nn.Module:
    return normfree.deploy(model) if form == "deploy" else model.eval()


def _errors(model: torch.nn.Module, path, sizes) -> list[float]:
    sess = ort.InferenceSession(str(path))
    errs = []
    for n, h, w in sizes:
        x = torch.randn(n, 3, h, w)
        with torch.no_grad():
            ref = model(x)
        errs.append(rel_err(torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]), ref))
    return errs


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_dynamo_export_dynamic_batch_and_hw_is_right_at_odd_sizes(tmp_path, form):
    """One graph, exported at 64×64, evaluated at other batches and odd H/W (TF-SAME pads differ per size)."""
    model = _form(tiny_regnet(), form)
    dims = {0: torch.export.Dim("N"), 2: torch.export.Dim("H", min=64, max=512),
            3: torch.export.Dim("W", min=64, max=512)}
    torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(tmp_path / "m.onnx"), input_names=["x"],
                      dynamo=True, dynamic_shapes=(dims,), verbose=False)
    errs = _errors(model, tmp_path / "m.onnx", [(2, 64, 64), (3, 65, 71), (1, 97, 80), (4, 67, 129)])
    assert max(errs) < TOL, errs


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_legacy_exporter_refuses_same_padding(tmp_path, form):
    """torch.jit.trace would bake the traced size's SAME padding into a graph declared dynamic in H/W
    (silently wrong at other sizes): refused, naming the exporter to use."""
    model = _form(tiny_regnet(), form)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation noise
        with pytest.raises(NormfreeError, match="dynamo=True"):
            torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(tmp_path / "m.onnx"), dynamo=False,
                              input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_legacy_exporter_symmetric_padding_dynamic_hw(tmp_path, form):
    """Symmetric padding has no size-dependent arithmetic: the TorchScript graph is right at every size.
    Gains and biases are moved off their init: ONNX Runtime 1.32 cannot load the legacy exporter's
    graph of a *freshly initialized* training form, whose identical gain/bias tensors the exporter
    merges (the graph passes onnx.checker and loads with ORT's optimizer off; pass
    ``do_constant_folding=False`` or export the deploy form)."""
    torch.manual_seed(0)
    model = live(normfree.create_model("nf_resnet26", width=0.25, padding="symmetric", num_classes=5))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model = _form(model, form)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(tmp_path / "m.onnx"), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    errs = _errors(model, tmp_path / "m.onnx", [(2, 64, 64), (3, 45, 51), (1, 33, 97)])
    assert max(errs) < TOL, errs
