import json

import pytest
import torch

import normfree
from normfree.cli import main


def test_cli_bench_adds_bn_twin_and_writes_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    rc = main(["bench", "nf_cifar_resnet20", "--batch", "2", "--size", "16", "--warmup", "0",
               "--repeats", "2", "--steps", "1", "--threads", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0 and "bn_cifar_resnet20" in out and "vs bn_cifar_resnet20" in out
    record = json.loads(path.read_text())
    names = [r["name"] for r in record["results"]]
    assert names == ["nf_cifar_resnet20", "bn_cifar_resnet20"]
    for r in record["results"]:
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert r["peak_step_bytes"] > 0 and r["resident_bytes"] > 0


def test_cli_bench_deploy_infer_compiled(capsys):
    torch._dynamo.reset()
    rc = main(["bench", "nf_cifar_resnet20", "--infer", "--deploy", "--batch", "2", "--size", "16",
               "--warmup", "1", "--repeats", "1", "--steps", "1", "--compile", "eager"])
    assert rc == 0 and "deploy mode" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["bench", "nf_nope"], ["bench", "nf_cifar_resnet20", "--deploy"],
                                  ["bench", "nf_cifar_resnet20", "--batch", "0"]])
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
