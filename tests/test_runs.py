"""One run per folder and consistent files after any interrupt: the run-folder policy, resume-safe config
changes, interrupted epoch ends (the final evaluation included), metrics without duplicate steps, stale
temp files, a killed process resumed bit-exactly, and the divergence stop."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from normfree.cli import main
from normfree.errors import ConfigError, NormfreeError, TrainingInterrupted
from normfree.train.checkpoint import load_checkpoint
from normfree.train.config import TrainConfig
from normfree.train.metrics import read_metrics
from normfree.train.trainer import Trainer


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_for(out: Path, **kw) -> TrainConfig:
    base = dict(model="nf_cifar_resnet20", data="synthetic", out_dir=str(out), model_kwargs={"width": 0.25},
                train_subset=48, test_subset=16, epochs=2, batch_size=16, lr=0.05, ema_decay=0.9, mixup=0.2,
                log_every=1, eval_batch_size=16)
    return TrainConfig(**{**base, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


TIMING = ("epoch_time_s", "img_per_s", "wall_time_s", "total_wall_time_s")


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run / "metrics.jsonl")]


def _summary(run: Path) -> dict:
    return {k: v for k, v in json.loads((run / "summary.json").read_text()).items() if k not in TIMING}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted reference run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    Trainer(cfg_for(out)).fit()
    return out


def _assert_matches_straight(run: Path, straight: Path) -> None:
    for name in ("last.safetensors", "best.safetensors"):
        _same_weights(run / name, straight / name)
        assert _strip(load_checkpoint(run / name)[1]["metrics"]) == _strip(load_checkpoint(straight / name)[1]["metrics"])
    assert _summary(run) == _summary(straight)
    assert _records(run) == _records(straight)


def _strip(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def _fit_interrupted(run: Path, monkeypatch, method: str, at_step: int) -> None:
    """Fit a fresh run, pressing Ctrl-C when ``Trainer.<method>`` is called at step ``at_step``."""
    trainer = Trainer(cfg_for(run))
    real = getattr(Trainer, method)

    def interrupting(self, *args):
        if self.step == at_step:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Trainer, method, interrupting)
    with pytest.raises(TrainingInterrupted, match=f"interrupted at step {at_step}"):
        trainer.fit()
    monkeypatch.setattr(Trainer, method, real)


def test_ctrl_c_exits_130_so_lanes_resume_instead_of_marking_failed(tmp_path, monkeypatch, capsys):
    """The CLI's status for an interrupted run is the shell's 130 (lanes.INTERRUPTED), not the error status 2."""
    run = tmp_path / "run"
    cfg_for(run).save_yaml(tmp_path / "c.yaml")
    real = Trainer._train_step

    def interrupting(self, *args):
        if self.step == 3:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", interrupting)
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 130
    assert "interrupted at step 3; saved a resumable checkpoint" in capsys.readouterr().err
    assert (run / "last.safetensors").exists()


def test_interrupt_during_final_evaluation_is_redone_on_resume(tmp_path, straight, monkeypatch):
    """Ctrl-C in the last epoch's evaluation: resume evaluates, updates best, logs and summarizes
    exactly as the uninterrupted run did (best is not left an epoch behind)."""
    run = tmp_path / "run"
    _fit_interrupted(run, monkeypatch, "evaluate", at_step=6)
    assert not (run / "summary.json").exists()
    assert load_checkpoint(run / "last.safetensors")[1]["progress"]["epoch_pending"] is True
    Trainer(cfg_for(run), resume=run / "last.safetensors").fit()
    _assert_matches_straight(run, straight)


def test_kill_after_logging_before_checkpoint_logs_each_step_once(tmp_path, straight):
    """A process killed after logging epoch 2 but before its checkpoint: the resume drops the orphaned
    records and logs them again, so metrics.jsonl equals the uninterrupted run's, step for step."""
    run = tmp_path / "run"
    Trainer(cfg_for(run)).fit(until_epoch=1)
    epoch1 = (run / "last.safetensors").read_bytes()
    Trainer(cfg_for(run), resume=run / "last.safetensors").fit()
    (run / "last.safetensors").write_bytes(epoch1)  # as if the epoch-2 checkpoint never landed
    (run / "summary.json").unlink()
    (run / ".last.safetensors.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    Trainer(cfg_for(run), resume=run / "last.safetensors").fit()
    steps = [r["step"] for r in _records(run) if r["kind"] == "step"]
    assert steps == sorted(set(steps)) == list(range(1, 7))
    _assert_matches_straight(run, straight)
    assert not list(run.glob(".*.tmp"))


def test_mid_epoch_interrupt_keeps_the_epoch_train_loss(tmp_path, straight, monkeypatch):
    run = tmp_path / "run"
    _fit_interrupted(run, monkeypatch, "_train_step", at_step=4)
    Trainer(cfg_for(run), resume=run / "last.safetensors").fit()
    _assert_matches_straight(run, straight)


def test_finished_run_summary_missing_is_rewritten_then_resume_says_finished(tmp_path, straight):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    (run / "summary.json").unlink()
    with pytest.warns(UserWarning, match="not written summary.json"):
        summary = Trainer(cfg_for(run), resume=run / "last.safetensors").fit()
    assert summary["test_top1"] == json.loads((straight / "summary.json").read_text())["test_top1"]
    assert _summary(run) == _summary(straight)
    with pytest.raises(ConfigError, match="already finished .*resume with --epochs above 2"):
        Trainer(cfg_for(run), resume=run / "last.safetensors").fit()
    Trainer(cfg_for(run, epochs=3), resume=run / "last.safetensors").fit()  # more epochs: resume-safe
    assert load_checkpoint(run / "last.safetensors")[1]["step"] == 9


def test_run_folder_policy(tmp_path, straight, capsys):
    """A folder with a run refuses a new one; --overwrite moves it aside; lock/log files are no run; an
    attempt that died before its first checkpoint is cleared."""
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    argv = ["train", "--model", "nf_cifar_resnet20", "--model-kwargs", '{"width": 0.25}', "--data", "synthetic",
            "--train-subset", "32", "--test-subset", "16", "--epochs", "1", "--batch-size", "16",
            "--out-dir", str(run)]
    before = (run / "metrics.jsonl").read_text()
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before
    with pytest.warns(UserWarning, match="moved the run"):
        assert main([*argv, "--overwrite"]) == 0
    assert (tmp_path / "run.old-1" / "metrics.jsonl").read_text() == before
    assert load_checkpoint(run / "last.safetensors")[1]["step"] == 2

    lane = tmp_path / "lane"  # what benchmarks/cifar10_nf_vs_bn/lanes.py leaves before a first run
    lane.mkdir()
    (lane / ".lane.lock").write_text("123")
    (lane / "stdout.log").write_text("log\n")
    lane_argv = [*argv[:-1], str(lane)]
    assert main(lane_argv) == 0
    assert (lane / ".lane.lock").exists() and (lane / "stdout.log").read_text() == "log\n"
    assert main([*lane_argv, "--epochs", "2", "--resume", str(lane / "last.safetensors")]) == 0  # continue

    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "config.yaml").write_text("lr: 7\n")
    (dead / "metrics.jsonl").write_text('{"kind": "step", "step": 1, "loss": 99}\n')
    with pytest.warns(UserWarning, match="wrote no checkpoint"):
        assert main([*argv[:-1], str(dead)]) == 0
    assert all(r.get("loss") != 99 for r in read_metrics(dead / "metrics.jsonl"))


def test_resume_lists_every_unsafe_change(straight):
    with pytest.raises(ConfigError) as err:
        Trainer(cfg_for(straight, lr=0.5, seed=3, eval_every=2, epochs=4), resume=straight / "last.safetensors")
    msg = str(err.value)
    assert "lr: 0.05 -> 0.5" in msg and "seed: 0 -> 3" in msg and "eval_every" not in msg.split(";")[0]


def test_divergence_stops_the_run_or_warns(tmp_path):
    """A deliberately divergent config (lr 10 with loose AGC: the loss stays finite but in the thousands)."""
    kw = dict(lr=10.0, agc_clip=0.05, warmup_epochs=0, weight_decay=0, mixup=0.0, augment=False, ema_decay=0,
              train_subset=64, batch_size=8, epochs=1, divergence_patience=5)
    run = tmp_path / "stop"
    with pytest.raises(NormfreeError, match=r"stayed above 5.5\d* \(4 x its start 1.3\d*\) for 5 steps .* at step 6"
                                            r".*--lr \(now 10\).*--agc-clip.*--warmup-epochs"):
        Trainer(cfg_for(run, **kw)).fit()
    assert not (run / "last.safetensors").exists()
    with pytest.warns(UserWarning, match="the run is diverging"):
        summary = Trainer(cfg_for(tmp_path / "warn", **kw, divergence="warn")).fit()
    assert summary["steps"] == 8
    Trainer(cfg_for(tmp_path / "off", **kw, divergence="off")).fit()


def test_sigkill_during_checkpoint_write_then_resume_is_bit_exact(tmp_path, straight):
    """Kill -9 the CLI as its first checkpoint is being written (its temp file appears; failing that, just
    after it lands), resume with the lane runner's command line, and end with the uninterrupted weights."""
    run = tmp_path / "run"
    c = cfg_for(run)
    c.save_yaml(tmp_path / "c.yaml")
    cmd = [sys.executable, "-m", "normfree", "train", "--config", str(tmp_path / "c.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if list(run.glob(".last.safetensors.*.tmp")) or (run / "last.safetensors").exists():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    last = run / "last.safetensors"
    resume = ["--resume", str(last)] if last.exists() else []
    done = subprocess.run(cmd + resume, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _assert_matches_straight(run, straight)
    assert not list(run.glob(".*.tmp"))
