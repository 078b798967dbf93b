"""The CIFAR-10 speedrun: both nets, the recipe's parts against independent references, the command."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normfree
from normfree.analysis import signal_propagation
from normfree.cli import main
from normfree.errors import ConfigError
from normfree.layers.norms import BatchNorm2d, EvoNormB0, EvoNormS0, GroupNorm2d
from normfree.models.speedrun import PatchWhitening, patch_second_moment
from normfree.profile import count_macs
from normfree.train.speedrun import (AlternatingFlipLoader, Lookahead, build_model, build_optimizer,
                                     crop, get_recipe, load_cifar, lr_multiplier, standardize,
                                     training_flops, tta_logits, train)

TINY = {"widths": (8, 16, 16)}
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
              nn.LocalResponseNorm, BatchNorm2d, EvoNormB0, EvoNormS0, GroupNorm2d)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """Standardized, spatially correlated images (smoothed noise), so patches have a real covariance."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(n, 3, 34, 34, generator=g), 3, 1) * 2 + torch.tensor([0.3, -0.2, 0.1])[:, None, None]
    return x


def _npz_dir(tmp_path, n_train=192, n_test=64):
    g = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        y = g.integers(0, 10, n)
        x = (g.integers(0, 80, (n, 32, 32, 3)) + y[:, None, None, None] * 17).astype(np.uint8)
        np.savez(tmp_path / f"{split}.npz", x=x, y=y.astype(np.int64))
    return tmp_path


def _tiny_recipe(name="nf_speedrun", **kw):
    base = dict(model_kwargs=TINY, batch_size=64, epochs=2, whiten_images=128, data_init_images=64
                if name == "nf_speedrun" else 0)
    return get_recipe(name).replace(**{**base, **kw})


@pytest.mark.parametrize("name", ["bn_cifar_airbench94", "nf_cifar_speedrun"])
def test_shapes_and_counted_macs(name):
    model = normfree.create_model(name)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert normfree.create_model(name, num_classes=7, **TINY)(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    for bad in ({"num_classes": 0}, {"widths": (8, 16)}):
        with pytest.raises(normfree.errors.ModelSpecError):
            normfree.create_model(name, **bad)
    # hand count of the airbench94 layout: 2x2 unpadded whitening conv (32 -> 31), then 3x3 convs at
    # 31 / 15 / 15 / 7 / 7 / 3 px after the floor max-pools, and the 256 -> 10 classifier
    convs = [(24, 12, 31, 1), (64, 24 * 9, 31, 1), (64, 64 * 9, 15, 1), (256, 64 * 9, 15, 1),
             (256, 256 * 9, 7, 1), (256, 256 * 9, 7, 1), (256, 256 * 9, 3, 1)]
    hand = sum(out * fan_in * size * size for out, fan_in, size, _ in convs) + 256 * 10
    assert count_macs(model, 32, exact=True) == hand == 118_147_360


def test_nf_net_has_no_normalization_and_no_batch_dependence():
    model = normfree.create_model("nf_cifar_speedrun", **TINY)
    assert not [m for m in model.modules() if isinstance(m, NORM_TYPES)]
    assert not [n for n, _ in model.named_buffers()]  # no running statistics of any kind
    model.whiten.fit(_images(64))
    model.init_from_data(_images(64, 1))
    model.train()  # in training mode, too, an example's output must not depend on its batch-mates
    x = _images(8, 2)
    alone = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(model(x), alone, rtol=1e-5, atol=1e-5)
    bn = normfree.create_model("bn_cifar_airbench94", **TINY).train()
    bn.whiten.fit(_images(64))
    assert not torch.allclose(bn(x)[:1], bn(x[:1]), atol=1e-3)  # the check bites on a BN net


def test_patch_whitening_is_frozen_and_matches_an_independent_eigendecomposition():
    x = _images(40)
    layer = PatchWhitening(3, 2, eps=5e-4)
    layer.fit(x)
    # independent reference: explicit patch loop in float64 NumPy
    a = x.double().numpy()
    patches = np.stack([a[:, :, i:i + 2, j:j + 2].reshape(len(a), -1) for i in range(31) for j in range(31)])
    patches = patches.reshape(-1, 12)
    cov = patches.T @ patches / len(patches)
    np.testing.assert_allclose(patch_second_moment(x, 2).numpy(), cov, rtol=1e-10, atol=1e-12)
    w = layer.weight.double().reshape(24, 12).numpy()
    half = w[:12]
    np.testing.assert_array_equal(w[12:], -half)
    # sign-free identity: Σ_i v_i v_iᵀ / (λ_i + eps) = (C + eps·I)⁻¹
    np.testing.assert_allclose(half.T @ half, np.linalg.inv(cov + 5e-4 * np.eye(12)), rtol=2e-4, atol=1e-6)
    lam = np.linalg.eigvalsh(cov)[::-1]
    out_var = np.diag(half @ cov @ half.T)  # output second moment per filter, largest eigenvalue first
    np.testing.assert_allclose(out_var, lam / (lam + 5e-4), rtol=2e-4)
    model = normfree.create_model("nf_cifar_speedrun", **TINY)
    opt = build_optimizer(model, _tiny_recipe())
    assert not model.whiten.weight.requires_grad
    assert all(p is not model.whiten.weight for g in opt.param_groups for p in g["params"])


def test_data_init_standardizes_every_preactivation_and_fixes_the_maxpool_shift():
    x = _images(128)
    model = normfree.create_model("nf_cifar_speedrun", **TINY)
    model.whiten.fit(x)
    before = signal_propagation(model, x, blocks=model.preactivation_points())
    assert max(before.sq_mean) > 0.05  # max-pool raises the mean: data-independent init is off
    model.init_from_data(x)
    after = signal_propagation(model, x, blocks=model.preactivation_points())
    assert len(after.names) == 6
    np.testing.assert_allclose(after.sq_mean, 0.0, atol=1e-8)
    np.testing.assert_allclose(after.var, 1.0, rtol=1e-4)
    held_out = signal_propagation(model, _images(128, 5), blocks=model.preactivation_points())
    assert max(held_out.sq_mean) < 0.1 and all(0.5 < v < 2 for v in held_out.var)
    with pytest.raises(ValueError):
        normfree.create_model("bn_cifar_airbench94", **TINY).init_from_data(x)


def test_residual_groups_merge_as_nf_resnets_and_the_data_init_follows_the_forward():
    x = _images(128)
    model = normfree.create_model("nf_cifar_speedrun", alpha=0.3, **TINY)
    model.whiten.fit(x)
    model.init_from_data(x)
    # the data init must propagate through the merge: on its batch, every group's pooled conv1 output
    # (computed by the real forward) is standardized; propagating the plain path instead breaks groups 2-3
    pooled = signal_propagation(model, x, blocks=["groups.*.pool"])
    np.testing.assert_allclose(pooled.sq_mean, 0.0, atol=1e-8)
    np.testing.assert_allclose(pooled.var, 1.0, rtol=1e-4)
    assert model.preactivation_points()[1] == "groups.*.merge"
    g, h_in = model.groups[0], model.act0(model.whiten(x[:4]))
    h = g.pool(g.conv1(h_in))
    by_hand = g.act2((h + 0.3 * g.conv2(g.act1(h))) / math.sqrt(1 + 0.09))  # h + α·f(h), over β
    torch.testing.assert_close(g(h_in), by_hand)
    with pytest.raises(ValueError):
        normfree.create_model("bn_cifar_airbench94", alpha=0.3, **TINY)
    with pytest.raises(ValueError):
        normfree.create_model("nf_cifar_speedrun", alpha=-1.0, **TINY)


def test_same_seed_same_weights_and_outputs():
    r = _tiny_recipe()
    a, b, c = (build_model(r, s, torch.device("cpu")) for s in (3, 3, 4))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.fc.weight, c.fc.weight)
    x = _images(4)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_tta_equals_manual_flip_translate_average():
    model = normfree.create_model("nf_cifar_speedrun", **TINY).eval()
    model.whiten.fit(_images(32))
    x = _images(5, 3)
    a = x.numpy()
    padded = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    up_left, down_right = padded[..., :32, :32], padded[..., 2:, 2:]

    def f(v):
        return model(torch.from_numpy(np.ascontiguousarray(v))).detach()

    views = [(a, 1 / 4), (a[..., ::-1], 1 / 4)] + [(v, 1 / 8) for u in (up_left, down_right) for v in (u, u[..., ::-1])]
    manual = sum(wt * f(v) for v, wt in views)
    plain, tta = tta_logits(model, x, 2)
    torch.testing.assert_close(tta, manual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain, f(a), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(tta_logits(model, x, 1)[1], (f(a) + f(a[..., ::-1])) / 2, rtol=1e-5, atol=1e-6)


def test_alternating_flip_and_translate():
    x, y = _images(8), torch.arange(8)
    loader = AlternatingFlipLoader(x, y, 4, seed=0, flip=True, translate=0)
    e0 = {int(l): img for xb, yb in loader.epoch(0) for img, l in zip(xb, yb)}
    e1 = {int(l): img for xb, yb in loader.epoch(1) for img, l in zip(xb, yb)}
    e2 = {int(l): img for xb, yb in loader.epoch(2) for img, l in zip(xb, yb)}
    flipped = [i for i in range(8) if torch.equal(e0[i], x[i].flip(-1))]
    assert 0 < len(flipped) < 8  # a random mirror once ...
    assert all(torch.equal(e1[i], e0[i].flip(-1)) and torch.equal(e2[i], e0[i]) for i in range(8))  # then alternate
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    shifts = torch.tensor([[0, 4], [3, 1]])
    out = crop(padded[:2], shifts, 32)
    assert torch.equal(out[0], padded[0, :, 0:32, 4:36]) and torch.equal(out[1], padded[1, :, 3:35, 1:33])


def test_schedule_lookahead_and_optimizer_groups():
    assert lr_multiplier(0, 100, 0.2, 0.23, 0.07) == pytest.approx(0.2)
    assert lr_multiplier(23, 100, 0.2, 0.23, 0.07) == pytest.approx(1.0)
    assert lr_multiplier(100, 100, 0.2, 0.23, 0.07) == pytest.approx(0.07)
    assert lr_multiplier(10, 100, 0.2, 0.23, 0.07) == pytest.approx(0.2 + 0.8 * 10 / 23)
    model = nn.Linear(2, 1)
    la = Lookahead(model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    la.update(model, 0.75)
    torch.testing.assert_close(model.weight.detach(), start + 0.25)
    bn = normfree.create_model("bn_cifar_airbench94", **TINY)
    r = get_recipe("airbench94")
    groups = build_optimizer(bn, r).param_groups
    kilostep = 1024 * (1 + 1 / 0.15)
    assert groups[0]["lr"] == pytest.approx(11.5 / kilostep * 64) and len(groups[0]["params"]) == 6
    for g in groups:  # airbench: the same decay per step for every group
        assert g["lr"] * g["weight_decay"] == pytest.approx(0.0153 * 1024 / kilostep)
    nf = normfree.create_model("nf_cifar_speedrun", **TINY)
    nf_groups = build_optimizer(nf, get_recipe("nf_speedrun")).param_groups
    assert nf_groups[2]["weight_decay"] == 0 and nf_groups[2]["params"][0] is nf.groups[0].conv1.gain
    scaled = build_optimizer(nf, get_recipe("nf_speedrun").replace(gain_lr_scale=0.5)).param_groups
    assert scaled[2]["lr"] == pytest.approx(0.5 * scaled[1]["lr"]) and scaled[2]["weight_decay"] == 0
    frozen = build_optimizer(nf, get_recipe("nf_speedrun").replace(gain_lr_scale=0.0)).param_groups
    in_groups = {id(p) for g in frozen for p in g["params"]}
    assert len(frozen) == 2 and all(not p.requires_grad and id(p) not in in_groups for p in nf.gain_parameters())
    frozen_wd = build_optimizer(nf, get_recipe("nf_speedrun").replace(gain_lr_scale=0.0, gain_weight_decay=True))
    assert len(frozen_wd.param_groups) == 2  # frozen wins over decay (and no division by the 0 lr)


@pytest.mark.parametrize("setting, value, needle", [
    ("gain_lr_scale", -1.0, ">= 0"), ("bias_lr_scale", 0.0, "> 0"), ("epochs", 0, "> 0"),
    ("batch_size", 0, "an integer >= 1"), ("batch_size", 2.5, "an integer"), ("lr", float("nan"), "finite"),
    ("momentum", 1.0, "< 1"), ("label_smoothing", 1.0, "< 1"), ("lookahead_every", 0, ">= 1"),
    ("lookahead_decay", 1.5, "<= 1"), ("tta_level", 3, "<= 2"), ("translate", -1, ">= 0"),
    ("data_init_images", -1, ">= 0"), ("agc_clip", -0.01, ">= 0"), ("flip", "yes", "true or false"),
    ("model_kwargs", [1], "a mapping"), ("net", "gn", "bn or nf"),
])
def test_recipe_refuses_bad_settings_naming_them(setting, value, needle):
    with pytest.raises(ConfigError, match=re.escape(f"speedrun setting {setting} = {value!r}: must be") + ".*"
                       + re.escape(needle)):
        get_recipe("nf_speedrun").replace(**{setting: value})


def test_recipe_edges_and_conversions_are_accepted():
    r = get_recipe("airbench94").replace(gain_lr_scale=0, epochs=1, batch_size=64.0, tta_level=0, lr_peak_at=1,
                                         lookahead_decay=0, label_smoothing=0, translate=0)
    assert r.batch_size == 64 and isinstance(r.batch_size, int) and r.epochs == 1.0
    assert r.replace(lr="0.5").lr == 0.5  # a number written as text (YAML, --set) is a number


def test_flops_are_six_macs_per_image_plus_init(tmp_path):
    assert training_flops(10, 7, 3) == 6 * 10 * 7 + 2 * 3
    data = load_cifar(f"npz:{_npz_dir(tmp_path)}", torch.device("cpu"))
    r = _tiny_recipe(epochs=1)
    calls: list[tuple[int, float]] = []
    row = train(r, data, 0, "cpu", log=lambda s: None, on_step=lambda i, m, loss: calls.append((i, loss)))
    assert [i for i, _ in calls] == [1, 2, 3] and all(1.0 < loss < 5.0 for _, loss in calls)  # mean, not summed
    model = normfree.create_model("nf_cifar_speedrun", **TINY)
    macs = count_macs(model, 32, exact=True)
    steps = 192 // 64
    whiten = 128 * 31 * 31 * 12 * 12
    assert row["macs_per_image"] == macs and row["train_images_seen"] == steps * 64
    assert row["train_pflop"] * 1e15 == pytest.approx(6 * macs * steps * 64 + 2 * (whiten + 64 * macs), rel=1e-12)


def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    data = load_cifar(f"npz:{_npz_dir(tmp_path)}", torch.device("cpu"))
    r = _tiny_recipe(epochs=2, agc_clip=0.05)
    rows = [train(r, data, 1, "cpu", tmp_path / name, log=lambda s: None) for name in ("a", "b")]
    assert rows[0] == {**rows[1], "wall_s": rows[0]["wall_s"]}

    def interrupt(line: str) -> None:
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(r, data, 1, "cpu", tmp_path / "c", log=interrupt)
    assert not (tmp_path / "c" / "result.json").exists()
    lines: list[str] = []
    resumed = train(r, data, 1, "cpu", tmp_path / "c", log=lines.append)
    assert lines[0].startswith("resumed") and len(lines) == 2
    assert {**resumed, "wall_s": 0} == {**rows[0], "wall_s": 0}
    from normfree.train.checkpoint import load_checkpoint
    final_a, final_c = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors")[0], \
        load_checkpoint(tmp_path / "c" / "checkpoint.safetensors")[0]
    assert all(torch.equal(final_a[k], final_c[k]) for k in final_a)
    with pytest.raises(normfree.errors.CheckpointError):
        train(r.replace(lr=1.0), data, 1, "cpu", tmp_path / "c", log=lambda s: None)


def test_speedrun_command_end_to_end(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    d = _npz_dir(tmp_path / "data")
    argv = ["speedrun", "--data", f"npz:{d}", "--epochs", "1", "--batch-size", "64", "--seeds", "2",
            "--device", "cpu", "--out-dir", str(tmp_path / "out"), "--set", "model_kwargs={'widths': (8, 16, 16)}",
            "--set", "whiten_images=64", "--set", "data_init_images=64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nf_speedrun" in out and "top1_tta" in out and "PFLOP" in out and "device cpu" in out
    assert "top1: " in out and " ± " in out
    result = json.loads((tmp_path / "out" / "s1" / "result.json").read_text())
    assert result["net"] == "nf" and result["settings"]["model_kwargs"]["widths"] == [8, 16, 16]
    assert main(argv) == 0 and "finished earlier" in capsys.readouterr().out  # not rerun
    assert main(["speedrun", "--data", f"npz:{d}", "--set", "nonsense=1"]) == 2
    assert "unknown speedrun setting" in capsys.readouterr().err


def test_standardize_and_bad_settings():
    x = torch.full((1, 32, 32, 3), 255, dtype=torch.uint8)
    np.testing.assert_allclose(standardize(x)[0, :, 0, 0].numpy(),
                               [(1 - 0.4914) / 0.2470, (1 - 0.4822) / 0.2435, (1 - 0.4465) / 0.2616], rtol=1e-6)
    with pytest.raises(ConfigError):
        get_recipe("nope")
    with pytest.raises(ConfigError):
        AlternatingFlipLoader(_images(3), torch.arange(3), 4, 0)


def _run_script(monkeypatch, script, args: list[str]) -> None:
    """``python SCRIPT ARGS`` in this process, as its ``__main__``; a non-zero exit fails."""
    import runpy

    monkeypatch.setattr("sys.argv", [str(script), *args])
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:
        assert stop.code in (0, None), f"{script.name} {args}: exit {stop.code}"


def test_lane_runner_and_summarizer_at_tiny_size(tmp_path, monkeypatch, capsys):
    import csv
    import os
    import subprocess
    import sys

    import yaml

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    (tmp_path / "data").mkdir()
    data = _npz_dir(tmp_path / "data")
    tiny = {"model_kwargs": {"widths": [8, 16, 16]}, "epochs": 1.0, "batch_size": 64, "whiten_images": 64,
            "train_subset": 128, "test_subset": 32}
    plan = {"stages": [{"name": "tiny", "table": "tiny", "common": tiny, "runs": [
        {"name": "bn", "recipe": "airbench94", "seeds": [0]},
        {"name": "nf", "recipe": "nf_speedrun", "seeds": [0], "set": {"data_init_images": 64}},
        {"name": "nf_blowup", "recipe": "nf_speedrun", "seeds": [0], "set": {"lr": 1e9, "agc_clip": 0.0}}]}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    env = {**os.environ, "DATA_DIR": str(data), "OMP_NUM_THREADS": "1"}
    lanes = [sys.executable, str(root / "benchmarks/speedrun/lanes.py"), "--plan", str(tmp_path / "plan.yaml"),
             "--exp", str(tmp_path / "exp"), "--threads", "1"]
    subprocess.run(lanes, env=env, cwd=root, capture_output=True)  # the lanes spawn the runs; one diverges
    # --list and the summary read files only: run as scripts in this process (no second torch import)
    monkeypatch.chdir(root)
    _run_script(monkeypatch, root / "benchmarks/speedrun/lanes.py", [*lanes[2:], "--list"])
    assert capsys.readouterr().out.split() == ["done", "tiny/bn/s0", "done", "tiny/nf/s0", "failed", "tiny/nf_blowup/s0"]
    run_dir = tmp_path / "exp" / "tiny" / "nf" / "s0"
    assert not (run_dir / "checkpoint.safetensors").exists()
    assert "--set=data_init_images=64" in (run_dir / "command.txt").read_text()
    _run_script(monkeypatch, root / "benchmarks/speedrun/summarize.py", ["--exp", str(tmp_path / "exp"),
                                                                          "--out", str(tmp_path)])
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["net", "model", "recipe", "seed", "epochs", "train_images_seen", "macs_per_image",
                             "train_pflop", "top1", "top1_tta", "wall_s", "device"]
    assert [r["net"] for r in rows] == ["bn", "nf"] and rows[0]["train_images_seen"] == "128"
    assert rows[1]["recipe"] == "nf_speedrun+widths=[8, 16, 16]+epochs=1.0+batch_size=64+whiten_images=64" \
        "+data_init_images=64"  # the levers changed relative to the recipe
    md = (tmp_path / "results.md").read_text()
    assert "| tiny | nf |" in md and len(rows) == 2  # the diverged run is listed apart, with its error and command
    assert "| tiny | nf_blowup | 0 | nf_speedrun seed 0: training loss is nan at epoch 1 (diverged) |" in md
    assert md.count("--set=lr=1000000000.0") == 1


def test_data_shards_round_trip(tmp_path):
    import importlib.util

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("shards", root / "benchmarks/speedrun/shards.py")
    shards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shards)
    (tmp_path / "data").mkdir()
    src = _npz_dir(tmp_path / "data", n_train=300, n_test=50)
    shards.split(src, tmp_path / "parts", max_mb=0.5)
    parts = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert len(parts) >= 2
    assert all(sum(f.stat().st_size for f in (tmp_path / "parts" / p).iterdir()) < 0.55 * 2**20 for p in parts)
    shards.join(tmp_path / "parts", tmp_path / "joined")
    for split in ("train", "test"):
        a, b = np.load(src / f"{split}.npz"), np.load(tmp_path / "joined" / f"{split}.npz")
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"], b["y"])


def test_committed_plan_names_only_known_settings(tmp_path):
    """A typo in benchmarks/speedrun/plan.yaml fails here, not hours into a lane."""
    import importlib.util

    import yaml

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("speedrun_lanes", root / "benchmarks/speedrun/lanes.py")
    lanes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lanes)
    plan = yaml.safe_load((root / "benchmarks/speedrun/plan.yaml").read_text())
    runs = lanes.runs(plan, tmp_path)
    assert len({r["dir"] for r in runs}) == len(runs) > 20  # every run has its own folder
    for r in runs:
        values = {k: v for k, v in r["values"].items() if k not in ("train_subset", "test_subset")}
        recipe = get_recipe(r["recipe"]).replace(**values)  # unknown keys raise ConfigError
        if "model_kwargs" in values:
            normfree.create_model(recipe.model, **{**recipe.model_kwargs, "widths": (8, 16, 16)})
    nf_headline = [r for r in runs if r["table"] == "headline" and r["name"] == "nf"]
    assert nf_headline and all(r["values"]["lr"] == 2.875 for r in nf_headline)  # the anchor merged


def test_summary_checks_each_target_within_its_flop_limit():
    """The README's target checks: the BN gap to 94.01, and per NF target the best full-budget NF cell
    inside its FLOP limit (a more accurate cell over the limit, or a screen, must not count)."""
    import importlib.util

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("speedrun_summarize", root / "benchmarks/speedrun/summarize.py")
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)

    def cell(net, pflop, accs):
        return [{"net": net, "recipe": net, "seed": i, "train_pflop": pflop, "top1": a - 1, "top1_tta": a}
                for i, a in enumerate(accs)]

    cells = {("headline", "bn"): cell("bn", 1.0, [93.9, 94.0, 94.1]),
             ("headline", "nf"): cell("nf", 1.001, [93.4, 93.5, 93.6]),
             ("ablation", "nf_e19.8"): cell("nf", 1.98, [94.1, 94.3]),
             ("ablation", "nf_e30"): cell("nf", 3.0, [99.0, 99.0, 99.0]),
             ("design_s10k_e3", "nf_tiny"): cell("nf", 0.1, [99.0, 99.0, 99.0])}
    got = {name: (measured, status) for name, _, measured, status in summarize.checks(cells)}
    bn = next(v for k, v in got.items() if k.startswith("BN reference"))
    assert bn == ("-0.01 pt (3 seeds)", "met")
    assert got["NF target"] == ("94.20 % at 1.9800× (`ablation/nf_e19.8`, 2 seeds)", "met, 2 of 3 seeds")
    assert got["NF milestone"] == ("no NF cell at ≤ 1× (the cheapest is 1.0010×)", "missed")
    cells[("headline", "bn")] = cell("bn", 1.0, [93.5, 93.6, 93.7])
    assert summarize.checks(cells)[0][2:] == ("-0.41 pt (3 seeds)", "missed")
    block = summarize.results_block(cells)
    cells[("ablation", "nf_e19.8")] = cell("nf", 1.98, [93.8, 94.0])
    assert summarize.checks(cells)[1][2:] == ("93.90 % at 1.9800× (`ablation/nf_e19.8`, 2 seeds)", "missed, 2 of 3 seeds")
    assert "| nf_e19.8 | `nf` | 2 | **93.20** (93.10, 93.30) | **94.20** (94.10, 94.30) | +0.70 | 1.9800 |" in block


def test_lane_estimate_scales_with_epochs_and_keeps_devices_and_data_apart(tmp_path):
    """``--until`` must not start a 19.8-epoch run on the strength of 9.9-epoch ones, nor price a CPU run by
    GPU walls or full-data runs by a screen on a subset."""
    import importlib.util
    import json

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("speedrun_lanes", root / "benchmarks/speedrun/lanes.py")
    lanes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lanes)

    def run(name, values, wall=None, device="cpu x1"):
        d = tmp_path / name
        d.mkdir()
        if wall is not None:
            (d / "result.json").write_text(json.dumps({"wall_s": wall, "device": device}))
        return {"recipe": "nf_speedrun", "values": values, "dir": d, "minutes": 7}

    runs = [run("a", {}, wall=990.0), run("b", {"epochs": 2.0}, wall=300.0),       # 100 and 150 s per epoch
            run("gpu", {}, wall=9.9, device="cuda NVIDIA H200"),                     # 1 s per epoch
            run("screen", {"epochs": 3.0, "train_subset": 10240}, wall=30.0),      # 10 s per epoch
            run("long", {"epochs": 19.8}), run("short_screen", {"epochs": 6.0, "train_subset": 10240}),
            run("other_screen", {"train_subset": 512})]
    assert lanes.expected_seconds(runs[4], runs) == pytest.approx(19.8 * 125.0)   # median of 100, 150
    assert lanes.expected_seconds(runs[4], runs, device="cuda") == pytest.approx(19.8)
    assert lanes.expected_seconds(runs[5], runs) == pytest.approx(60.0)
    assert lanes.expected_seconds(runs[6], runs) == 7 * 60  # nothing finished on its images: the stage's minutes
