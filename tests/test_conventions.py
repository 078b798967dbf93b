"""PyTorch/timm conventions: reset_parameters and init_weights, device/dtype factory kwargs,
classifier access, pretrained_cfg, the folding plan's rules, consistent options and the CLI's error rule."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import normfree
from normfree.cli import main
from normfree.errors import CheckpointError, ModelOptionError, NormfreeError
from normfree.layers import (BatchNorm2d, EvoNormB0, EvoNormS0, HeConv2d, LayerFactory, ScalarBias,
                             ScaledStdConv2d)
from normfree.models import ConvSpec, ResidualBlock
from normfree.models.blocks import set_fast_path
from normfree.models.fold import plan_block

TINY = {
    "nf_resnet26": dict(width=0.25),
    "bn_cifar_resnet20": dict(width=0.25),
    "fixup_cifar_resnet20": dict(width=0.25),
    "revbn_cifar_resnet20": dict(width=0.25),
    "gnws_cifar_resnet20": dict(width=0.25),
    "evob0_cifar_resnet20": dict(width=0.25),
    "nf_regnet_b0": dict(widths=(16, 32, 48, 64), depths=(1, 1, 1, 1)),
    "nfnet_f0": dict(widths=(32, 64, 128, 128), depths=(1, 1, 1, 1), group_width=16),
}


def _build(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return normfree.create_model(name, **TINY[name], **kw)


def _perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(1.0)


@pytest.mark.parametrize("name", TINY)
def test_init_weights_gives_the_fresh_build_of_the_same_seed(name):
    fresh = _build(name, seed=3)
    model = _build(name, seed=1)
    _perturb(model)
    torch.manual_seed(3)
    model.init_weights()
    ref = fresh.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_every_custom_layer_resets_to_its_construction_init():
    for make in (lambda: ScaledStdConv2d(4, 6, 3, stride=2), lambda: ScaledStdConv2d(4, 6, 1, ws="timm", gamma=1.7),
                 lambda: HeConv2d(4, 6, 3, 2, bias=True), lambda: BatchNorm2d(6, scale_init=0.1),
                 lambda: EvoNormB0(6), lambda: EvoNormS0(8, groups=4), ScalarBias):
        torch.manual_seed(5)
        fresh = make()
        layer = make()
        _perturb(layer)
        torch.manual_seed(5)
        layer.reset_parameters()
        for k, v in layer.state_dict().items():
            if k != "num_batches_tracked":
                assert torch.equal(v, fresh.state_dict()[k]), (type(layer).__name__, k)
    conv = ScaledStdConv2d(8, 16, 3)  # the official init, independently: N(0, 1/fan_in), zero bias, unit gain
    assert abs(conv.weight.std().item() * (8 * 9) ** 0.5 - 1) < 0.1
    assert torch.equal(conv.bias, torch.zeros(16)) and torch.equal(conv.gain, torch.ones(16))
    assert torch.equal(BatchNorm2d(3, scale_init=0.1).weight, torch.full((3,), 0.1))
    block = ResidualBlock(8, [ConvSpec(8, 3)], LayerFactory(), skipinit_gain=0.7)
    with torch.no_grad():
        block.skip_gain.fill_(3.0)
    block.reset_parameters()
    assert block.skip_gain.item() == pytest.approx(0.7)


@pytest.mark.parametrize("name", ["nf_resnet26", "evob0_cifar_resnet20", "nfnet_f0"])
def test_meta_build_then_materialize_equals_a_cpu_build(name):
    meta = _build(name, device="meta")
    assert {p.device.type for p in [*meta.parameters(), *meta.buffers()]} == {"meta"}
    cpu = _build(name, seed=4)
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in cpu.parameters())
    meta.to_empty(device="cpu")
    torch.manual_seed(4)
    meta.init_weights()
    for k, v in meta.state_dict().items():
        assert torch.equal(v, cpu.state_dict()[k]), k


def test_dtype_factory_kwarg_builds_every_parameter_in_that_dtype():
    model = _build("bn_cifar_resnet20", dtype=torch.float64)
    assert {p.dtype for p in [*model.parameters(), *model.buffers()] if p.is_floating_point()} == {torch.float64}
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_reset_classifier_and_get_classifier():
    model = _build("nf_resnet26").eval()
    assert model.get_classifier() is model.fc and model.fc.out_features == 1000
    model.reset_classifier(5)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 5 and model.pretrained_cfg["num_classes"] == 5
    assert torch.equal(head.bias, torch.zeros(5)) and 0.005 < head.weight.std().item() < 0.02  # N(0, 0.01)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    feats = model(x)
    torch.testing.assert_close(feats, model.forward_features(x).mean(dim=(2, 3)))
    torch.testing.assert_close(normfree.deploy(model)(x), feats, rtol=1e-4, atol=1e-5)  # γ kept: no head
    bn = _build("bn_cifar_resnet20")
    bn.reset_classifier(3)
    assert torch.equal(bn.fc.weight, torch.zeros(3, bn.num_features))  # the official BN baseline: zero fc
    with pytest.raises(NormfreeError, match="num_classes"):
        model.reset_classifier(-1)


def test_pretrained_cfg_of_each_family():
    keys = {"input_size", "test_input_size", "crop_pct", "crop_mode", "eval_policy", "interpolation", "mean",
            "std", "num_classes"}
    r50 = normfree.create_model("nf_resnet50", device="meta")
    c20 = normfree.create_model("bn_cifar_resnet20", device="meta")
    b0 = normfree.create_model("nf_regnet_b0", device="meta", num_classes=10)
    for m in (r50, c20, b0):
        assert set(m.pretrained_cfg) == keys
    assert r50.pretrained_cfg["test_input_size"] == (3, 224, 224) and r50.pretrained_cfg["crop_pct"] == 0.875
    assert c20.pretrained_cfg["input_size"] == (3, 32, 32) and c20.input_size == 32
    assert b0.pretrained_cfg["input_size"] == (3, 192, 192) and b0.pretrained_cfg["num_classes"] == 10
    assert b0.pretrained_cfg["crop_pct"] == round(224 / 256, 4)  # official S/(S+32)


def test_options_are_the_same_across_families_or_rejected_with_a_reason():
    for name in ("bn_resnet50", "bn_cifar_resnet20", "relubn_cifar_resnet20", "evos0_resnet50"):
        for opt in ("alpha", "skipinit_gain"):
            with pytest.raises(ModelOptionError, match=f"{opt}: a normalized network has no"):
                normfree.create_model(name, device="meta", **{opt: 0.5})
    for name in TINY:
        if name.startswith("nf"):  # every NF family: the skip-gain init and the plain-conv ablation
            m = _build(name, skipinit_gain=0.25, std_conv=False, device="meta")
            assert all(b.skipinit_gain == 0.25 for b in m.blocks())
            assert not any(isinstance(c, ScaledStdConv2d) for c in m.modules())
            assert isinstance(m.stages[0][0].branch[0], HeConv2d)
    with pytest.raises(TypeError):  # ModelOptionError is a TypeError, as for any Python call
        normfree.create_model("nf_regnet_b0", not_an_option=1)


class _Scale(nn.Module):
    """A shortcut the plan cannot fold into (not a conv): everything must be paid elementwise."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 1.5


def test_fold_plan_rules_and_both_consumers_follow_them():
    torch.manual_seed(0)
    layers = LayerFactory(act="gelu")
    block = ResidualBlock(8, [ConvSpec(6, 1), ConvSpec(6, 3, 2), ConvSpec(12, 1)], layers, beta=0.8,
                          alpha=0.3, se_hidden=3, se_after=1, shortcut="avgpool_conv", skipinit_gain=0.6)
    plan = block.plan
    assert plan.shortcut == "pooled_conv" and plan.preact_deferred
    assert plan.steps == ("conv", "act", "conv", "se", "act", "conv")
    assert plan.deferred == (False, True, False, False, True, False)  # an activation defers only into a conv
    assert plan.gain_into == "conv"
    se_last = ResidualBlock(8, [ConvSpec(8, 3)], layers, se_hidden=2, se_after=-1)
    assert se_last.plan.gain_into == "se" and se_last.plan.shortcut == "identity"
    # A shortcut that is not a (pooled) conv: the pre-activation's γ·β is paid before it, on both paths.
    block.shortcut = _Scale(block.shortcut)
    assert plan_block(block.preact, block.shortcut, block.branch).preact_deferred is False
    block.replan()
    x = torch.randn(3, 8, 9, 9)
    with torch.no_grad():
        ref = set_fast_path(copy.deepcopy(block), False).eval()(x)
        torch.testing.assert_close(block.eval()(x), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(normfree.deploy(block)(x), ref, rtol=1e-5, atol=1e-6)
        assert normfree.deploy(block).preact.factor != 1.0  # not folded: the plan said so


def test_checkpoint_format_is_stamped_and_checked(tmp_path):
    from safetensors.torch import save_file

    from normfree.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint

    path = tmp_path / "ok.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"step": 3})
    assert load_checkpoint(path)[1] == {"step": 3, "format": CHECKPOINT_FORMAT}
    other = tmp_path / "future.safetensors"
    save_file({"w": torch.ones(2)}, str(other), metadata={"normfree": json.dumps({"format": 99})})
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(other)


def test_load_weights_reads_state_dicts_and_training_checkpoints(tmp_path):
    from normfree.train.checkpoint import load_weights, save_checkpoint

    src = _build("bn_cifar_resnet20", seed=1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "a.pt")
    save_checkpoint(tmp_path / "b.safetensors", {f"model.{k}": v for k, v in src.state_dict().items()}, {})
    for file in ("a.pt", "b.safetensors"):
        dst = _build("bn_cifar_resnet20", seed=2)
        load_weights(dst, tmp_path / file)
        assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(_build("nf_resnet26"), tmp_path / "a.pt")


def test_cli_turns_only_project_errors_into_one_line(monkeypatch, capsys, tmp_path):
    import normfree.commands.models as models_cmd

    assert main(["spp", "nf_resnet26:widht=1", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "did you mean 'width'" in err and "Traceback" not in err

    def bug(*_args, **_kw):
        raise ZeroDivisionError("a bug inside the library")

    monkeypatch.setattr(models_cmd, "print_table", bug)
    with pytest.raises(ZeroDivisionError):  # not swallowed: its traceback reaches the user
        main(["models"])

    def plain_value_error(*_args, **_kw):
        raise ValueError("an internal ValueError is a bug too")

    monkeypatch.setattr(models_cmd, "print_table", plain_value_error)
    with pytest.raises(ValueError, match="internal"):
        main(["models"])
    assert main(["eval", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert main(["spp", "nf_cifar_resnet20:width=0.25", "--batch-size", "2", "--out-dir", str(tmp_path / "a_file" / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # an OSError on the user's path: one line
    assert err.startswith("normfree spp: error:") and "a_file" in err
