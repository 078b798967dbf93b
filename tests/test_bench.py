import json
import sys

import pytest
import torch

import normfree
from normfree.cli import main
from normfree.profile import count_params


def test_cli_bench_adds_bn_twin_and_writes_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    rc = main(["bench", "nf_cifar_resnet20", "--batch-size", "2", "--image-size", "16", "--warmup", "0",
               "--repeats", "2", "--steps", "1", "--threads", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0 and "bn_cifar_resnet20" in out and "vs bn_cifar_resnet20" in out
    record = json.loads(path.read_text())
    names = [r["name"] for r in record["results"]]
    assert names == ["nf_cifar_resnet20", "bn_cifar_resnet20"]
    for r in record["results"]:
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert r["peak_step_bytes"] > 0 and r["resident_bytes"] > 0
        assert len(r["round_images_per_s"]) == 2
        assert min(r["round_images_per_s"]) == r["images_per_s_min"]


def test_cli_bench_deploy_infer_compiled(capsys):
    torch._dynamo.reset()
    rc = main(["bench", "nf_cifar_resnet20", "--infer", "--deploy", "--batch-size", "2", "--image-size", "16",
               "--warmup", "1", "--repeats", "1", "--steps", "1", "--compile", "eager"])
    assert rc == 0 and "deploy mode" in capsys.readouterr().out


def test_cli_bench_model_options_go_to_the_twin_too(tmp_path, capsys):
    path = tmp_path / "r.json"
    rc = main(["bench", "nf_cifar_resnet20:width=0.25,stochdepth_rate=0", "--batch-size", "2", "--image-size", "16",
               "--warmup", "0", "--repeats", "1", "--steps", "1", "--json", str(path)])
    assert rc == 0 and "vs bn_cifar_resnet20:width=0.25,stochdepth_rate=0" in capsys.readouterr().out
    record = json.loads(path.read_text())
    res = {r["name"]: r["resident_bytes"] for r in record["results"]}
    assert list(res) == ["nf_cifar_resnet20:width=0.25,stochdepth_rate=0",
                         "bn_cifar_resnet20:width=0.25,stochdepth_rate=0"]
    small = count_params(normfree.create_model("nf_cifar_resnet20", width=0.25))
    assert small * 4 < res["nf_cifar_resnet20:width=0.25,stochdepth_rate=0"] < small * 4 * 3  # the width applied


@pytest.mark.parametrize("argv", [["bench", "nf_nope"], ["bench", "nf_cifar_resnet20", "--deploy"],
                                  ["bench", "nf_cifar_resnet20", "--batch-size", "0"],
                                  ["bench", "nf_cifar_resnet20:bogus=1"], ["bench", "nf_cifar_resnet20:width"]])
def test_cli_bench_bad_input_exits_2(argv, capsys):
    assert main(argv) == 2 and "error" in capsys.readouterr().err


class _NoSync(torch.overrides.TorchFunctionMode):
    """Fail on anything that copies a tensor value to the host (a device sync on GPU)."""

    BANNED = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
              torch.Tensor.__int__, torch.Tensor.cpu, torch.Tensor.numpy}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.BANNED:
            raise AssertionError(f"host sync in the hot path: {func.__name__}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("deployed", [False, True])
def test_hot_path_never_syncs(deployed):
    model = normfree.create_model("nf_resnet26", width=0.125, use_se=True, num_classes=3)
    if deployed:
        model = normfree.deploy(model)
    x = torch.randn(2, 3, 33, 33)
    with _NoSync():
        out = model(x)
        if not deployed:
            out.sum().backward()


def test_cli_bench_foreign_baselines_with_fake_timm(monkeypatch, capsys):
    """timm baselines get their own ratio lines; under --deploy their conv→BN pairs are folded (fx)."""
    import types

    from normfree.commands import bench

    built = {}

    def create_model(name, **kw):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                    torch.nn.Linear(4, 10))
        model.num_classes = 10  # as timm models have
        built[name] = model
        return model

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model,
                                                                   __version__="fake"))
    monkeypatch.setitem(bench.TIMM_BASELINES, "nf_cifar_resnet20", ("a", "b"))
    argv = ["bench", "nf_cifar_resnet20", "--batch-size", "2", "--image-size", "16", "--warmup", "0",
            "--repeats", "1", "--steps", "1", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(f"vs {b}" in out for b in ("bn_cifar_resnet20", "timm:a", "timm:b")), out

    ns = types.SimpleNamespace(models=["nf_cifar_resnet20"], baseline=True, num_classes=None, in_chans=3,
                               deploy=True, grad_checkpointing=False)
    models, baselines, notes = bench._models(ns)
    assert baselines["nf_cifar_resnet20"] == ["bn_cifar_resnet20", "timm:a", "timm:b"]
    folded = models["timm:a"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(folded(x), built["a"].eval()(x), rtol=1e-5, atol=1e-6)
    assert any("torch.fx" in n for n in notes)
