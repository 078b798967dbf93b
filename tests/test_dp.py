"""DP-SGD mechanics of ``normfree train --dp`` (normfree/train/dp.py): clipping, noise, Poisson sampling,
augmentation multiplicity, the accountant across resume (on synthetic images), and the CLI end to end on
the demo digits."""
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("opacus")
from opacus.accountants import PRVAccountant, RDPAccountant  # noqa: E402

from normfree.cli import main  # noqa: E402
from normfree.errors import CheckpointError, ConfigError  # noqa: E402
from normfree.train.checkpoint import load_checkpoint  # noqa: E402
from normfree.train.config import TrainConfig  # noqa: E402
from normfree.train.data import to_input  # noqa: E402
from normfree.train.dp import clip_per_example  # noqa: E402
from normfree.train.trainer import Trainer  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def dp_cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(model="nf_cifar_resnet20", data="synthetic", out_dir=str(tmp_path / "run"),
                model_kwargs={"width": 0.25}, train_subset=128, test_subset=64, epochs=2, batch_size=32,
                lr=0.5, dp=True, noise_multiplier=1.1, max_grad_norm=0.5, dp_physical_batch=64,
                ema_decay=0.9, log_every=1, eval_batch_size=64)
    return TrainConfig(**{**base, **kw})


def _grad_vector(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def test_every_clipped_example_gradient_has_norm_at_most_c(tmp_path):
    trainer = Trainer(dp_cfg(tmp_path, augmult=2))
    idx = torch.arange(24)
    grads, _ = trainer.dp.example_grads(idx, torch.Generator().manual_seed(0))
    raw = torch.cat([g.reshape(24, -1) for g in grads], 1).norm(dim=1)
    for c in (raw.median().item(), 10 * raw.max().item()):  # half of them clipped / none clipped
        clipped = torch.cat([g.reshape(24, -1) for g in clip_per_example(grads, c)], 1).norm(dim=1)
        assert torch.all(clipped <= c * (1 + 1e-6))
        small = raw < c
        torch.testing.assert_close(clipped[small], raw[small], rtol=1e-5, atol=0)  # below C: untouched
        torch.testing.assert_close(clipped[~small], torch.full_like(clipped[~small], c), rtol=1e-5, atol=0)
    assert (raw > raw.median()).any()


@pytest.mark.parametrize("engine", ["functorch", "opacus"])
def test_example_gradients_are_single_example_backward_passes_of_the_training_loss(tmp_path, engine):
    """Un-augmented, example i's DP gradient is the plain gradient of cross-entropy with the run's label
    smoothing on example i alone (float32, a different route: 1e-4 relative)."""
    kw = dict(augment=False, label_smoothing=0.2, dp_engine=engine,
              model_kwargs={"width": 0.25, "stochdepth_rate": 0.0})
    trainer = Trainer(dp_cfg(tmp_path, **kw))
    idx = torch.tensor([5, 9, 60])
    grads, _ = trainer.dp.example_grads(idx, torch.Generator().manual_seed(0))
    x, y = trainer.train_data.batch(idx, True, torch.Generator())
    x = to_input(x, trainer.mean, trainer.std, False)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for i in range(len(idx)):
        loss = F.cross_entropy(trainer.model(x[i:i + 1]), y[i:i + 1], label_smoothing=0.2)
        want = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
        got = torch.cat([g[i].flatten() for g in grads])
        assert float((got - want).norm() / want.norm()) < 1e-4


def test_noise_std_is_sigma_c_per_coordinate_of_the_summed_gradient(tmp_path, monkeypatch):
    """With zero gradients the summed gradient is pure noise: std σ·C per coordinate, mean 0."""
    trainer = Trainer(dp_cfg(tmp_path, noise_multiplier=0.7, max_grad_norm=2.0))
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def zero_grads(idx, gen):
        return [torch.zeros(len(idx), *p.shape) for p in params], 0.0

    monkeypatch.setattr(trainer.dp, "example_grads", zero_grads)
    draws = []
    for step in range(3):
        trainer.dp.backward(step)
        draws.append(_grad_vector(trainer.model) * trainer.cfg.batch_size)  # undo the 1/L scaling
    noise = torch.cat(draws)
    assert noise.numel() > 30_000
    assert abs(noise.std().item() / (0.7 * 2.0) - 1) < 0.03  # ~6 standard errors of the estimate
    assert abs(noise.mean().item()) < 0.03 * 1.4
    assert not torch.equal(draws[0], draws[1])  # fresh noise every step
    trainer.dp.backward(0)
    assert torch.equal(_grad_vector(trainer.model) * trainer.cfg.batch_size, draws[0])  # keyed by step


def test_poisson_sampling_is_random_per_step_with_rate_q(tmp_path):
    trainer = Trainer(dp_cfg(tmp_path, train_subset=0))
    dp = trainer.dp
    sizes = torch.tensor([len(dp.sample(s)) for s in range(200)], dtype=torch.float64)
    expected = dp.sample_rate * dp.n
    assert expected == pytest.approx(32)
    assert abs(sizes.mean().item() - expected) < 4 * math.sqrt(expected * (1 - dp.sample_rate) / 200)
    assert sizes.std() > 3  # variable batch size, not a fixed-size batch
    assert torch.equal(dp.sample(7), dp.sample(7)) and not torch.equal(dp.sample(7), dp.sample(8))


def test_augmult_with_identical_copies_equals_k1(tmp_path):
    """Un-augmented, each of the K copies has the same gradient, so their mean is the K=1 gradient."""
    kw = dict(augment=False, model_kwargs={"width": 0.25, "stochdepth_rate": 0.0})
    one = Trainer(dp_cfg(tmp_path / "a", augmult=1, **kw))
    three = Trainer(dp_cfg(tmp_path / "b", augmult=3, **kw))
    idx = torch.tensor([3, 17, 40, 41, 99])
    (g1, loss1), (g3, loss3) = (t.dp.example_grads(idx, torch.Generator().manual_seed(0)) for t in (one, three))
    assert loss1 == pytest.approx(loss3, rel=1e-5)
    for a, b in zip(g1, g3):
        assert a.shape == b.shape == (5, *a.shape[1:])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    one.dp.backward(0), three.dp.backward(0)  # the whole private step too
    torch.testing.assert_close(_grad_vector(one.model), _grad_vector(three.model), rtol=1e-4, atol=1e-7)
    four = Trainer(dp_cfg(tmp_path / "c", augmult=4, model_kwargs=kw["model_kwargs"]))  # real augmentations
    g4, _ = four.dp.example_grads(idx, torch.Generator().manual_seed(0))
    assert not torch.allclose(g1[0], g4[0], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("accountant,cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_reported_epsilon_is_opacus_accountant_for_q_sigma_steps(tmp_path, accountant, cls):
    cfg = dp_cfg(tmp_path, accountant=accountant, epochs=1, augmult=1)
    summary = Trainer(cfg).fit()
    q, steps = 32 / 128, 4
    standalone = cls()
    for _ in range(steps):
        standalone.step(noise_multiplier=1.1, sample_rate=q)
    assert summary["steps"] == steps
    assert summary["epsilon"] == pytest.approx(standalone.get_epsilon(1e-5), rel=1e-9)


def test_noise_is_calibrated_to_the_target_epsilon(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the calibration's trial σ must not leak Opacus warnings to the user
        trainer = Trainer(dp_cfg(tmp_path, noise_multiplier=0.0, epsilon=3.0, epochs=3))
    acc = RDPAccountant()
    for _ in range(trainer.total_steps):
        acc.step(noise_multiplier=trainer.dp.noise_multiplier, sample_rate=trainer.dp.sample_rate)
    assert 2.98 < acc.get_epsilon(1e-5) <= 3.0


def test_resumed_run_continues_the_same_accountant(tmp_path):
    straight = dp_cfg(tmp_path / "a", epochs=3)
    end = Trainer(straight).fit()
    staged = dp_cfg(tmp_path / "b", epochs=3)
    Trainer(staged).fit(until_epoch=1)
    ckpt = Path(staged.out_dir) / "last.safetensors"
    privacy = load_checkpoint(ckpt)[1]["privacy"]
    assert privacy["history"] == [[1.1, 0.25, 4]] and privacy["max_grad_norm"] == 0.5
    resumed = Trainer(staged, resume=ckpt).fit()
    assert resumed["epsilon"] == end["epsilon"] > privacy["epsilon"] > 0
    a, b = load_checkpoint(Path(straight.out_dir) / "last.safetensors")[0], load_checkpoint(ckpt)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same samples, augmentations and noise too
    # a resume may not change privacy settings (the run-folder check names the field first)
    with pytest.raises(ConfigError, match="noise_multiplier: 1.1 -> 2.0"):
        Trainer(dp_cfg(tmp_path / "c", epochs=3, noise_multiplier=2.0), resume=ckpt)
    dp = Trainer(dp_cfg(tmp_path / "e", epochs=3)).dp  # the accountant's own check: same flags, other data
    with pytest.raises(CheckpointError, match=r"sample_rate 0.5 -> 0.25"):
        dp.load({**privacy, "sample_rate": 0.5}, ckpt)
    with pytest.raises(CheckpointError, match="not trained with --dp"):
        dp.load(None, ckpt)
    with pytest.raises(ConfigError, match="dp: False -> True"):
        plain = dp_cfg(tmp_path / "d", dp=False, epochs=1)
        Trainer(plain).fit()
        Trainer(dp_cfg(tmp_path / "d", epochs=2), resume=Path(plain.out_dir) / "last.safetensors")


def test_engines_agree(tmp_path):
    """torch.func per-example gradients and Opacus hooks (normfree.privacy) give the same private step."""
    kw = dict(model_kwargs={"width": 0.25, "stochdepth_rate": 0.0}, augmult=2, dp_physical_batch=5)
    a = Trainer(dp_cfg(tmp_path / "a", dp_engine="functorch", **kw))
    b = Trainer(dp_cfg(tmp_path / "b", dp_engine="opacus", **kw))
    assert a.dp.backward(3) == pytest.approx(b.dp.backward(3), rel=1e-5)
    torch.testing.assert_close(_grad_vector(a.model), _grad_vector(b.model), rtol=1e-4, atol=1e-6)
    assert all(p.grad_sample is None for p in b.model.parameters() if hasattr(p, "grad_sample"))


@pytest.mark.parametrize("kw,match", [
    ({"model": "bn_cifar_resnet20"}, "batch statistics"),
    ({"model": "evob0_cifar_resnet20"}, "EvoNormB0"),
    ({"mixup": 0.2}, "mixup"),
    ({"noise_multiplier": 0.0}, "--epsilon"),
    ({"epsilon": 8.0}, "not both"),
    ({"noise_multiplier": -1.0}, r"noise_multiplier must be > 0 \(got -1.0\)"),
    ({"noise_multiplier": 0.0, "epsilon": -1.0}, r"epsilon must be > 0 \(got -1.0\)"),
    ({"noise_multiplier": 0.0, "epsilon": float("nan")}, "epsilon must be > 0"),
    ({"noise_multiplier": 0.0, "epsilon": 1e-9}, "--epsilon 1e-09 cannot be reached"),
    ({"accountant": "gdpx"}, "accountant"),
    ({"accum_steps": 2}, "dp-physical-batch"),
])
def test_refusals(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(dp_cfg(tmp_path, **kw))


def test_cli_dp_end_to_end_on_demo_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")  # the embedded digits
    out = tmp_path / "cli"
    main(["train", "--data", "demo", "--model", "nf_cifar_resnet20", "--model-kwargs", '{"width": 0.25}',
          "--train-subset", "192", "--test-subset", "64", "--epochs", "2", "--batch-size", "64", "--lr", "1",
          "--dp", "--epsilon", "8", "--delta", "1e-5", "--max-grad-norm", "1", "--augmult", "2",
          "--dp-physical-batch", "32", "--ema-decay", "0.9", "--accountant", "rdp", "--out-dir", str(out)])
    assert "summary:" in capsys.readouterr().out
    epochs = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert 0 < epochs[0]["epsilon"] < epochs[1]["epsilon"] <= 8.0 + 1e-6
    assert "ema_test_top1" in epochs[1]
    meta = load_checkpoint(out / "last.safetensors")[1]
    assert meta["privacy"]["accountant"] == "rdp" and meta["privacy"]["augmult"] == 2
    assert meta["privacy"]["epsilon"] == pytest.approx(epochs[1]["epsilon"])


def test_dp_benchmark_summarizer_row(tmp_path):
    """benchmarks/dp_cifar10/summarize.py turns a finished run folder into one results.csv row."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "dp_cifar10" / "summarize.py"
    spec = importlib.util.spec_from_file_location("dp_summarize", path)
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    cfg = dp_cfg(tmp_path, epochs=1, recipe="dp_cifar10_cpu")
    end = Trainer(cfg).fit()
    row = summarize.row(Path(cfg.out_dir))
    assert list(row) == summarize.COLUMNS
    assert row["net"] == "NF" and row["model"] == "nf_cifar_resnet20" and row["recipe"] == "dp_cifar10_cpu"
    assert float(row["epsilon"]) == pytest.approx(end["epsilon"], abs=1e-3)
    assert float(row["top1"]) == pytest.approx(end["ema_test_top1"], abs=0.01)
    assert (row["batch"], row["augmult"], row["steps"], row["seed"]) == (32, 1, 4, 0)
    assert summarize.net_kind("gnws_wrn16_4") == "GN+WS"


def test_dp_benchmark_results_block_checks_the_targets():
    """The generated README table: per-net means with each seed, NF's 65 % / 71.7 % targets and NF vs its twin."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "dp_cifar10" / "summarize.py"
    spec = importlib.util.spec_from_file_location("dp_summarize", path)
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)

    def r(net, top1, seed):
        return {"net": net, "model": f"{net.lower()}_m", "recipe": "x", "epsilon": "7.999", "delta": 1e-5,
                "noise_multiplier": "0.7953", "batch": 1024, "augmult": 1, "steps": 1152, "seed": seed,
                "top1": f"{top1:.2f}", "wall_s": "7200", "device": "cpu x1"}

    assert summarize.results_block([]) == "No run has finished yet."
    one = summarize.results_block([("cpu_t", "nf", r("NF", 66.0, 0))])
    assert "| cpu_t | nf | NF | `nf_m` | 1 | **66.00** (66.00) | 7.999 (1e-05) | 0.7953 | 1152 × 1024 × 1 | 2.00 | cpu x1 |" in one
    assert "| cpu_t | NF target: top1 ≥ 65.0 % at ε ≤ 8 | 66.00 % | met, 1 of 2 seeds |" in one
    assert "| cpu_t | NF ≥ its GN+WS twin | GN+WS pending | pending |" in one
    both = summarize.results_block([("cpu_t", "nf", r("NF", 60.0, 0)), ("cpu_t", "nf", r("NF", 62.0, 1)),
                                    ("cpu_t", "gnws", r("GN+WS", 61.5, 0)), ("cpu_t", "gnws", r("GN+WS", 61.5, 1)),
                                    ("probe_t", "nf_a", r("NF", 10.0, 0)), ("probe_t", "nf_b", r("NF", 20.0, 0))])
    assert "| cpu_t | NF target: top1 ≥ 65.0 % at ε ≤ 8 | 61.00 % | missed |" in both
    assert "| cpu_t | NF ≥ its GN+WS twin | -0.50 pt | missed |" in both
    assert "| cpu_t | gnws | GN+WS | `gn+ws_m` | 2 | **61.50** (61.50, 61.50) |" in both
    assert "| probe_t | nf_a | NF |" in both and "| probe_t | nf_b | NF |" in both  # probe cells kept apart
    assert "| probe_t | NF target" not in both
