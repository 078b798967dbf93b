"""Training loop: exact resume, Ctrl-C, NaN stop, bad input, CLI train/eval (tiny models, synthetic data)."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from normfree.cli import main
from normfree.errors import NormfreeError
from normfree.train.checkpoint import load_checkpoint
from normfree.train.config import TrainConfig
from normfree.train.metrics import read_metrics
from normfree.train.trainer import Trainer



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs on a shared 2-core box: one intra-op thread is much faster than two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = {"width": 0.25, "drop_rate": 0.1}  # stochastic depth 0.1 is the model default


def tiny_cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(model="nf_cifar_resnet20", data="synthetic", out_dir=str(tmp_path / "run"), model_kwargs=TINY,
                train_subset=64, test_subset=32, epochs=2, batch_size=16, lr=0.05, ema_decay=0.9,
                agc_clip=0.01, mixup=0.2, log_every=1, eval_batch_size=32)
    return TrainConfig(**{**base, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0]


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_is_bitwise_exact(tmp_path):
    straight = tiny_cfg(tmp_path / "a")
    Trainer(straight).fit()
    staged = tiny_cfg(tmp_path / "b")
    Trainer(staged).fit(until_epoch=1)
    first = Path(staged.out_dir) / "last.safetensors"
    assert load_checkpoint(first)[1]["step"] == 4
    Trainer(staged, resume=first).fit()
    a, b = _weights(Path(straight.out_dir) / "last.safetensors"), _weights(first)
    assert any(k.startswith("optim.") for k in a) and any(k.startswith("ema.") for k in a)
    _assert_identical(a, b)
    assert not torch.equal(a["model.fc.weight"], a["ema.fc.weight"])


def test_ctrl_c_saves_resumable_checkpoint(tmp_path, monkeypatch):
    straight = tiny_cfg(tmp_path / "a", mixup=0.0, cutmix=0.5)
    Trainer(straight).fit()
    cfg = tiny_cfg(tmp_path / "b", mixup=0.0, cutmix=0.5)
    trainer = Trainer(cfg)
    real_step = Trainer._train_step

    def interrupt_at_5(self, idx):
        if self.step == 5:
            raise KeyboardInterrupt
        return real_step(self, idx)

    monkeypatch.setattr(Trainer, "_train_step", interrupt_at_5)
    with pytest.raises(NormfreeError, match="interrupted at step 5.*--resume"):
        trainer.fit()
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    path = Path(cfg.out_dir) / "last.safetensors"
    assert load_checkpoint(path)[1]["step"] == 5  # mid-epoch 2
    Trainer(cfg, resume=path).fit()
    _assert_identical(_weights(Path(straight.out_dir) / "last.safetensors"), _weights(path))


def test_nan_loss_stops_and_keeps_good_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path)
    trainer = Trainer(cfg)
    trainer.fit(until_epoch=1)
    path = Path(cfg.out_dir) / "last.safetensors"
    before = path.read_bytes()
    with torch.no_grad():
        trainer.model.fc.weight.fill_(float("nan"))
    with pytest.raises(NormfreeError, match=r"loss became nan at step 4 .*--lr.*--agc-clip"):
        trainer.fit()
    assert path.read_bytes() == before


def test_training_learns_synthetic_data(tmp_path):
    cfg = tiny_cfg(tmp_path, train_subset=256, epochs=3, mixup=0.0, ema_decay=0.0, lr=0.1)
    summary = Trainer(cfg).fit()
    assert summary["test_top1"] > 60  # 4 classes: chance is 25%
    run = Path(cfg.out_dir)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "last.safetensors", "best.safetensors"):
        assert (run / name).is_file(), name
    assert (run / "plot.png").is_file() or pytest.importorskip("matplotlib") is None
    records = read_metrics(run / "metrics.jsonl")  # log_every=1: a record per step, one per epoch
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, 3 * 256 // 16 + 1))
    assert [r["epoch"] for r in epochs] == [1, 2, 3] and epochs[-1]["test_top1"] == summary["test_top1"]
    for e in epochs:  # the epoch's train loss is the mean of its steps' logged losses
        losses = [r["loss"] for r in steps if r["epoch"] == e["epoch"] - 1]
        assert len(losses) == 16 and e["train_loss"] == pytest.approx(sum(losses) / 16, rel=1e-6)


def test_grad_accumulation_matches_full_batch(tmp_path):
    kw = dict(augment=False, mixup=0.0, model_kwargs={"width": 0.25, "stochdepth_rate": 0.0},
              epochs=1, ema_decay=0.0)
    a = Trainer(tiny_cfg(tmp_path / "a", **kw))
    b = Trainer(tiny_cfg(tmp_path / "b", accum_steps=4, **kw))
    a.fit(), b.fit()
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("change, message", [
    ({"model": "nf_cifar_resnet21"}, "unknown model"),
    ({"data": "npz:/nonexistent/folder"}, "does not exist"),
    ({"data": "bogus"}, "unknown data spec"),
    ({"num_classes": 2}, r"num_classes \(--num-classes\) = 2 but synthetic has 4 classes"),
    ({"batch_size": 1000}, "larger than"),
    ({"batch_size": 10, "accum_steps": 4}, "divisible"),
])
def test_bad_input_errors(tmp_path, change, message):
    with pytest.raises(NormfreeError, match=message):
        Trainer(tiny_cfg(tmp_path, **change))


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NormfreeError, match="cannot write to output folder"):
        Trainer(tiny_cfg(tmp_path, out_dir=str(blocker / "run")))


def test_resume_from_other_model_is_refused(tmp_path):
    cfg = tiny_cfg(tmp_path, epochs=1)
    Trainer(cfg).fit()
    path = Path(cfg.out_dir) / "last.safetensors"
    with pytest.raises(NormfreeError, match="differs from the checkpoint's in model: 'nf_cifar_resnet20' -> "
                                            "'bn_cifar_resnet20'"):
        Trainer(tiny_cfg(tmp_path / "b", model="bn_cifar_resnet20"), resume=path)
    with pytest.raises(NormfreeError, match="in model_kwargs: .*'width': 0.5"):
        Trainer(tiny_cfg(tmp_path / "c", model_kwargs={"width": 0.5}), resume=path)


def test_empty_and_corrupt_image_folders(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    with pytest.raises(NormfreeError, match="no images"):
        Trainer(tiny_cfg(tmp_path, data=f"imagefolder:{root}"))
    for cls in ("cat", "dog"):
        (root / cls).mkdir(exist_ok=True)
        for i in range(8):
            pil.fromarray(np.full((20, 24, 3), 30 * i, np.uint8)).save(root / cls / f"{i}.png")
    cfg = tiny_cfg(tmp_path, data=f"imagefolder:{root}", image_size=16, train_subset=0, test_subset=0,
                   batch_size=8, epochs=1)
    with pytest.warns(UserWarning, match="no val/ folder"):
        trainer = Trainer(cfg)
    summary = trainer.fit()  # random-resized crops of 20x24 images to 16x16
    assert summary["steps"] == 2 and 0 <= summary["test_top1"] <= 100
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(NormfreeError, match="cannot read image .*broken.jpg"), pytest.warns(UserWarning):
        Trainer(tiny_cfg(tmp_path, **{**cfg.to_dict(), "batch_size": 17}), overwrite=True).fit()


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "--model", "nf_cifar_resnet20", "--model-kwargs", '{"width": 0.25}', "--data", "synthetic",
            "--train-subset", "32", "--test-subset", "16", "--epochs", "1", "--batch-size", "16",
            "--ema-decay", "0.9", "--out-dir", str(out)]
    assert main(argv) == 0
    assert "summary:" in capsys.readouterr().out
    assert main(["eval", str(out / "last.safetensors"), "--subset", "16"]) == 0
    text = capsys.readouterr().out
    assert "raw: top-1" in text and "ema: top-1" in text
    assert main(["train", "--data", "npz:/missing", "--out-dir", str(out)]) == 2
    assert main(["eval", str(out / "nope.safetensors")]) == 2


CIFAR_NPZ = Path(os.environ.get("NORMFREE_CIFAR10", "cifar10-npz-not-configured"))
"""A folder with CIFAR-10 as train.npz/test.npz (``NORMFREE_CIFAR10``); the test skips without it."""


@pytest.mark.slow
@pytest.mark.skipif(not (CIFAR_NPZ / "train.npz").is_file(), reason="set NORMFREE_CIFAR10 to a CIFAR-10 npz folder")
def test_cifar10_npz_few_steps(tmp_path):
    cfg = TrainConfig(model="nf_cifar_resnet20", data=f"npz:{CIFAR_NPZ}", out_dir=str(tmp_path / "c10"),
                      train_subset=1024, test_subset=500, epochs=3, batch_size=64, lr=0.1, warmup_epochs=0.5)
    summary = Trainer(cfg).fit()
    assert summary["steps"] == 48 and math.isfinite(summary["test_loss"])
    assert summary["test_top1"] > 15  # chance is 10%


@pytest.mark.slow
def test_torch_compile_matches_eager(tmp_path):
    kw = dict(epochs=1, mixup=0.0, ema_decay=0.0, model_kwargs={"width": 0.25, "stochdepth_rate": 0.0})
    eager, compiled = Trainer(tiny_cfg(tmp_path / "e", **kw)), Trainer(tiny_cfg(tmp_path / "c", compile=True, **kw))
    eager.fit(), compiled.fit()
    for (n, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5, msg=n)


def test_spp_every_records_history_and_continues_on_resume(tmp_path):
    from normfree.analysis.spp import load_json
    cfg = tiny_cfg(tmp_path, spp_every=3, ema_decay=0.0)  # 4 steps per epoch
    Trainer(cfg).fit(until_epoch=1)
    history = tmp_path / "run" / "spp" / "spp_history.json"
    assert [r.step for r in load_json(history)] == [0, 3]
    assert not history.with_suffix(".png").exists()  # drawn when training ends
    Trainer(cfg, resume=tmp_path / "run" / "last.safetensors").fit()
    records = load_json(history)
    assert [r.step for r in records] == [0, 3, 6]
    assert history.with_suffix(".png").stat().st_size > 10_000  # the SPP-over-training figure
    assert {r.inputs for r in records} == {"16 training images"}
    assert all(len(r.var) == 9 and all(math.isfinite(v) for v in r.var) for r in records)


def test_spp_recording_does_not_change_training(tmp_path):
    plain = tiny_cfg(tmp_path / "a", epochs=1)
    recorded = tiny_cfg(tmp_path / "b", epochs=1, spp_every=2)
    Trainer(plain).fit()
    Trainer(recorded).fit()
    _assert_identical(_weights(Path(plain.out_dir) / "last.safetensors"),
                      _weights(Path(recorded.out_dir) / "last.safetensors"))


def test_train_help_documents_fields(capsys):
    assert "0 = off" in TrainConfig.field_help()["agc_clip"]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "Signal propagation of one fixed batch" in capsys.readouterr().out


def test_grad_checkpointing_trains_the_same_weights(tmp_path):
    runs = []
    for flag in (False, True):
        trainer = Trainer(tiny_cfg(tmp_path / str(flag), epochs=1, grad_checkpointing=flag))
        assert trainer.model.grad_checkpointing is flag
        trainer.fit()
        runs.append(_weights(tmp_path / str(flag) / "run" / "last.safetensors"))
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        torch.testing.assert_close(runs[1][k], runs[0][k], rtol=1e-4, atol=1e-6, msg=k)
