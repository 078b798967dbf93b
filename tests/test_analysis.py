"""Signal-propagation analysis: the paper's SPP findings at small scale, and the tool around them."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normfree
from normfree.analysis import (SPPRecorder, SPPResult, diagnose, find_blocks, find_problems, load_csv,
                               load_json, measurement_mode, save_csv, save_json, signal_propagation)
from normfree.cli import main

HE_RELU_RES_VAR = 1 - 1 / math.pi  # He fan-in conv on ReLU(N(0,1)): variance 1 − 1/π ≈ 0.682


def spp(name, shape, **kwargs):
    torch.manual_seed(0)
    return signal_propagation(normfree.create_model(name, **kwargs), input_shape=shape)


@pytest.fixture(scope="module")
def nf_ws():
    return spp("nf_cifar_resnet56", (16, 3, 64, 64), skipinit_gain=1.0)


# ---- the paper's findings -------------------------------------------------------------------------

def test_nf_resnet_with_scaled_ws_follows_the_expected_curve(nf_ws):
    r = nf_ws
    assert len(r.names) == 27 and r.expected_var is not None
    for i in range(len(r.names)):
        assert r.sq_mean[i] < 0.05 * r.var[i], (i, r.sq_mean[i], r.var[i])
        assert abs(r.deviation[i]) <= 0.10, (i, r.var[i], r.expected_var[i])
        assert abs(r.res_var[i] - 1.0) <= 0.15, (i, r.res_var[i])
    assert find_problems(r) == []


def test_expected_curve_is_one_plus_k_alpha_squared_reset_at_transitions(nf_ws):
    k = 0
    for expected, transition in zip(nf_ws.expected_var, nf_ws.transition):
        k = 1 if transition else k + 1
        assert expected == pytest.approx(1 + k * 0.2**2)
    assert nf_ws.transition.count(True) == 2  # two strided stages in a CIFAR ResNet


def test_expected_curve_needs_unit_skip_gains():
    assert spp("nf_cifar_resnet20", (4, 3, 32, 32)).expected_var is None  # official gain 0


def test_plain_convs_show_a_mean_shift_growing_with_depth():
    r = spp("nf_cifar_resnet56", (16, 3, 32, 32), skipinit_gain=1.0, std_conv=False)
    assert r.sq_mean[-1] >= 5 * r.sq_mean[0], (r.sq_mean[0], r.sq_mean[-1])
    kinds = {f.kind: f for f in find_problems(r)}
    assert "grows with depth" in kinds["mean_shift"].message


def test_bn_relu_resnet_grows_within_stages_and_resets():
    r = spp("bn_cifar_resnet56", (16, 3, 32, 32), width=2)  # 32–128 channels: less sampling noise
    bounds = sorted({0, *(i for i, t in enumerate(r.transition) if t)})
    stages = [range(a, b) for a, b in zip(bounds, bounds[1:] + [len(r.names)])]
    assert len(stages) == 3
    for stage in stages:
        var = [r.var[i] for i in stage]
        assert all(b > a for a, b in zip(var, var[1:])), var
        assert r.sq_mean[stage[-1]] > 2 * r.sq_mean[stage[0]]
    for t in bounds[1:]:
        assert r.var[t] < 0.5 * r.var[t - 1] and r.sq_mean[t] < 0.5 * r.sq_mean[t - 1]
    for v in r.res_var:
        assert v == pytest.approx(HE_RELU_RES_VAR, rel=0.10)


# ---- any model: torchvision-style ResNets and named blocks -----------------------------------------

class BasicBlock(nn.Module):
    """torchvision's BasicBlock, written out (torchvision is not a dependency)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(BasicBlock):
    def __init__(self, cin, cout, stride=1):
        super().__init__(cin, cout, stride)
        self.conv3 = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x):
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyTorchvisionResNet(nn.Module):
    def __init__(self, block=BasicBlock, in_chans=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(block(8, 8), block(8, 8))
        self.layer2 = nn.Sequential(block(8, 16, 2), block(16, 16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.fc(self.layer2(self.layer1(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("block, last_bn", [(BasicBlock, "bn2"), (Bottleneck, "bn3")])
def test_torchvision_style_blocks_are_found(block, last_bn):
    model = TinyTorchvisionResNet(block)
    blocks = find_blocks(model)
    assert [b.name for b in blocks] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    assert [b.transition for b in blocks] == [False, False, True, False]
    assert all(b.branch_end is getattr(b.module, last_bn) for b in blocks)
    torch.manual_seed(0)
    r = signal_propagation(model, input_shape=(8, 3, 32, 32))
    # The branch ends in BN; measured with batch statistics its output has unit variance per channel
    # (running statistics at init would pass the conv output through unnormalized).
    assert r.res_var == pytest.approx([1.0] * 4, abs=1e-3)


def test_measurement_keeps_modes_and_running_stats():
    torch.manual_seed(0)
    model = normfree.create_model("bn_cifar_resnet20").train()
    model.stages[0][0].branch.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    with measurement_mode(model):
        assert not model.training and all(m.training for m in model.modules()
                                           if isinstance(m, nn.BatchNorm2d))
        model(torch.randn(4, 3, 32, 32))
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


class Res(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(Res(4), Res(4), Res(4))

    def forward(self, x):
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


def test_named_blocks_on_a_custom_model():
    model = Custom()
    with pytest.raises(ValueError, match="no residual blocks found"):
        find_blocks(model)
    with pytest.raises(ValueError, match="no module name matches"):
        find_blocks(model, ["layers.*"])
    with pytest.raises(ValueError, match="no submodule 'trunk'"):
        find_blocks(model, "blocks.*", branch="trunk")
    x = torch.randn(4, 3, 8, 8)
    r = signal_propagation(model, x, blocks="blocks.*", branch="body")  # not blocks.0.body etc.
    assert r.names == ["blocks.0", "blocks.1", "blocks.2"]
    with torch.no_grad():
        stem = model.stem(x)
        branch = model.blocks[0].body(stem)
        out = stem + branch
    assert r.stem_var == pytest.approx(stem.var(dim=(0, 2, 3), unbiased=False).mean().item(), rel=1e-5)
    assert r.res_var[0] == pytest.approx(branch.var(dim=(0, 2, 3), unbiased=False).mean().item(), rel=1e-5)
    assert r.sq_mean[0] == pytest.approx((out.mean(dim=(0, 2, 3)) ** 2).mean().item(), rel=1e-5)
    assert r.expected_var is None


def test_bad_inputs_get_clear_errors():
    model = normfree.create_model("nf_cifar_resnet20")
    with pytest.raises(ValueError, match="batch of 1"):
        signal_propagation(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="1 channels but the model's first conv expects 3"):
        signal_propagation(model, torch.randn(4, 1, 32, 32))
    with pytest.raises(ValueError, match="no residual blocks found in Sequential"):
        signal_propagation(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(4, 3, 8, 8))


# ---- gradients, diagnosis, recording, files ---------------------------------------------------------

def test_gradient_stats_match_autograd_and_leave_params_alone():
    torch.manual_seed(0)
    model = normfree.create_model("nf_cifar_resnet20", skipinit_gain=1.0)
    x = torch.randn(4, 3, 32, 32)
    r = signal_propagation(model, x, gradients=True, seed=3)
    assert all(p.grad is None for p in model.parameters())
    outs = []
    handle = model.blocks()[-1].register_forward_hook(lambda m, i, o: outs.append(o))
    logits = model.eval()(x)  # eval: no stochastic depth, as the measurement
    handle.remove()
    labels = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), outs)
    assert r.grad_norm[-1] == pytest.approx(grad.norm().item(), rel=1e-4)
    assert r.grad_var[-1] == pytest.approx(grad.var(dim=(0, 2, 3), unbiased=False).mean().item(), rel=1e-4)
    assert all(g > 0 for g in r.grad_norm)


def fake(**overrides):
    n = 6
    values = dict(model="fake", input_shape=[8, 3, 32, 32], names=[f"b{i}" for i in range(n)],
                  transition=[i == 0 for i in range(n)], stem_sq_mean=0.0, stem_var=1.0,
                  sq_mean=[1e-3] * n, var=[1.0] * n, res_var=[1.0] * n)
    return SPPResult(**{**values, **overrides})


def test_diagnosis_names_the_block_where_problems_start():
    assert find_problems(fake()) == []
    assert "No problems found" in diagnose(fake())
    grads = fake(grad_norm=[1e-5, 1e-4, 1e-3, 0.05, 0.5, 1.0])
    (f,) = find_problems(grads)
    assert f.kind == "gradients" and f.block == 4 and "Vanishing" in f.message
    (f,) = find_problems(fake(var=[1, 2, 20, 200, 2000, 20000]))
    assert f.kind == "variance" and f.block == 3 and "Exploding" in f.message
    (f,) = find_problems(fake(res_var=[1, 1, 0.3, 0.2, 1, 1]))
    assert f.kind == "residual" and f.block == 3 and "0.3 at block 3 (b2), worst 0.2 at block 4" in f.message
    (f,) = find_problems(fake(res_var=[0.0] * 6))
    assert "zero-initialized" in f.message
    (f,) = find_problems(fake(var=[1, 1, float("nan"), 1, 1, 1]))
    assert f.kind == "nonfinite" and f.block == 3


def test_zero_initialized_classifier_gives_zero_gradients():
    torch.manual_seed(0)
    model = normfree.create_model("bn_cifar_resnet20")  # official BN baseline: fc weights zero
    r = signal_propagation(model, input_shape=(4, 3, 32, 32), gradients=True)
    assert r.grad_norm == [0.0] * 9
    assert any("zero-initialized" in f.message for f in find_problems(r))


def test_recorder_measures_every_k_steps_without_side_effects(tmp_path):
    torch.manual_seed(0)
    model = normfree.create_model("bn_cifar_resnet20").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = SPPRecorder(every=2, input_shape=(4, 3, 16, 16), out_dir=tmp_path)
    returned = [recorder(model, step) for step in range(5)]
    assert [r is not None for r in returned] == [True, False, True, False, True]
    assert [r.step for r in recorder.history] == [0, 2, 4]
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [r.step for r in load_json(tmp_path / "spp_history.json")] == [0, 2, 4]
    assert load_csv(tmp_path / "spp_history.csv") == recorder.history
    with pytest.raises(ValueError, match="positive"):
        SPPRecorder(every=0)


def test_json_and_csv_round_trip(tmp_path, nf_ws):
    grads = spp("nf_cifar_resnet20", (4, 3, 32, 32), skipinit_gain=1.0)
    results = [nf_ws, grads, fake(grad_norm=[1.0] * 6, grad_var=[2.0] * 6, step=7, res_var=[None] * 6)]
    save_json(results, tmp_path / "a.json")
    save_csv(results, tmp_path / "a.csv")
    assert load_json(tmp_path / "a.json") == results
    assert load_csv(tmp_path / "a.csv") == results
    nf_ws.to_json(tmp_path / "one.json")
    assert load_json(tmp_path / "one.json") == [nf_ws]


def test_cli_writes_figure_numbers_and_diagnosis(tmp_path, capsys):
    out = tmp_path / "spp"
    rc = main(["spp", "nf_cifar_resnet20", "nf_cifar_resnet20:std_conv=False", "bn_cifar_resnet20",
               "--batch-size", "8", "--skipinit-gain", "1", "--grads", "--out-dir", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "nf_cifar_resnet20:std_conv=False (9 blocks" in text and "Mean shift" in text
    assert (out / "spp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = load_json(out / "spp.json")
    assert [r.model for r in results] == ["nf_cifar_resnet20", "nf_cifar_resnet20:std_conv=False",
                                          "bn_cifar_resnet20"]
    assert load_csv(out / "spp.csv") == results
    assert main(["spp", "nf_cifar_resnet20", "--batch-size", "1", "--out-dir", str(out)]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_cli_checkpoint_and_npz_data(tmp_path):
    torch.manual_seed(1)
    model = normfree.create_model("nf_cifar_resnet20", skipinit_gain=0.5)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "test.npz", x=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
             y=np.zeros(8, dtype=np.int64))
    args = ["spp", "nf_cifar_resnet20", "--batch-size", "4", "--image-size", "32", "--data", f"npz:{tmp_path}"]
    assert main([*args, "--out-dir", str(tmp_path / "a")]) == 0
    assert main([*args, "--checkpoint", str(tmp_path / "ckpt.pt"), "--out-dir", str(tmp_path / "b")]) == 0
    plain, loaded = load_json(tmp_path / "a/spp.json")[0], load_json(tmp_path / "b/spp.json")[0]
    assert plain.input_shape == [4, 3, 32, 32]
    assert loaded.var != plain.var  # skip gain 0.5 from the checkpoint instead of 0
    assert main([*args, "--checkpoint", str(tmp_path / "none.pt"), "--out-dir", str(tmp_path / "c")]) == 2


def test_cli_reads_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    model = normfree.create_model("nf_cifar_resnet20", skipinit_gain=0.5)
    safetensors.save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    assert main(["spp", "nf_cifar_resnet20", "--batch-size", "2", "--checkpoint",
                 str(tmp_path / "w.safetensors"), "--out-dir", str(tmp_path)]) == 0
    assert load_json(tmp_path / "spp.json")[0].expected_var is None



def test_cli_reads_a_training_checkpoint(tmp_path):
    from normfree.train.config import TrainConfig
    from normfree.train.trainer import Trainer

    cfg = TrainConfig(model="nf_cifar_resnet20", data="synthetic", out_dir=str(tmp_path / "run"),
                      model_kwargs={"width": 0.25}, train_subset=32, test_subset=16, epochs=1,
                      batch_size=16, eval_batch_size=16)
    Trainer(cfg).fit()
    # width, class count (4, not the default 10) and image size (synthetic: 16 px) come from the checkpoint
    assert main(["spp", "nf_cifar_resnet20", "--batch-size", "2", "--checkpoint",
                 str(tmp_path / "run" / "last.safetensors"), "--out-dir", str(tmp_path / "spp")]) == 0
    assert load_json(tmp_path / "spp" / "spp.json")[0].input_shape == [2, 3, 16, 16]


@pytest.mark.parametrize("kind, overrides, block, words", [
    # just past each threshold (a rule of thumb, documented in diagnose.py): found, at the right block
    ("mean_shift", dict(sq_mean=[1e-3, 1e-3, 0.06, 0.06, 0.06, 0.06]), 3, "exceeds 5%"),
    ("variance", dict(var=[1, 1, 1, 11, 120, 120]), 4, "Exploding"),
    ("variance", dict(var=[1, 1, 0.5, 0.05, 0.008, 0.008], sq_mean=[1e-6] * 6), 4, "Collapsing"),
    ("gradients", dict(grad_norm=[0.008, 0.05, 0.2, 0.5, 1, 1]), 2, "Vanishing"),
    ("gradients", dict(grad_norm=[120, 50, 20, 5, 1, 1]), 3, "Exploding"),
    ("expected", dict(var=[1.04, 1.08, 1.12, 1.5, 1.2, 1.24],
                      expected_var=[1.04, 1.08, 1.12, 1.16, 1.2, 1.24]), 4, "+29%"),
])
def test_each_finding_fires_just_past_its_threshold(kind, overrides, block, words):
    (f,) = find_problems(fake(**overrides))
    assert (f.kind, f.block) == (kind, block) and words in f.message, f.message
    # just inside the threshold nothing is reported
    inside = {"mean_shift": dict(sq_mean=[0.04] * 6), "variance": dict(var=[1, 1, 1, 11, 90, 90])
              if words == "Exploding" else dict(var=[1, 1, 0.5, 0.05, 0.012, 0.012], sq_mean=[1e-6] * 6),
              "gradients": dict(grad_norm=[0.012, 0.05, 0.2, 0.5, 1, 1]) if words == "Vanishing"
              else dict(grad_norm=[90, 50, 20, 5, 1, 1]),
              "expected": dict(var=[1.04, 1.08, 1.12, 1.4, 1.2, 1.24],
                               expected_var=[1.04, 1.08, 1.12, 1.16, 1.2, 1.24])}[kind]
    assert find_problems(fake(**inside)) == []


def test_one_zero_branch_is_not_reported_as_all_branches_zero():
    (f,) = find_problems(fake(res_var=[0.0, 1, 1, 1, 1, 1]))
    assert f.kind == "residual" and "zero-initialized" not in f.message and f.block == 1


def test_deviation_is_relative_to_the_expected_variance():
    assert fake(var=[2.0] * 6, expected_var=[1.6] * 6).deviation == pytest.approx([0.25] * 6)


class Shared(Custom):
    """The last block runs twice (weight sharing): every statistic is the block's first call."""

    def forward(self, x):
        return self.blocks[2](self.blocks(self.stem(x))).mean(dim=(2, 3))


def test_a_block_called_twice_is_measured_at_its_first_call():
    torch.manual_seed(0)
    model = Shared()
    x = torch.randn(4, 3, 8, 8)
    r = signal_propagation(model, x, blocks="blocks.*", branch="body")
    with torch.no_grad():
        h = model.blocks[:2](model.stem(x))
        branch = model.blocks[2].body(h)
    assert r.names == ["blocks.0", "blocks.1", "blocks.2"]
    assert r.res_var[2] == pytest.approx(branch.var(dim=(0, 2, 3), unbiased=False).mean().item(), rel=1e-5)
    assert r.var[2] == pytest.approx((h + branch).var(dim=(0, 2, 3), unbiased=False).mean().item(), rel=1e-5)
