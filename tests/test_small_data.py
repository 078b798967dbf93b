"""A large NF net on a small data set at the defaults diverges in its first steps: the trainer says so,
once and before any work, with what to do instead; it stays quiet where the defaults train."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from normfree.errors import NormfreeError
from normfree.train.advice import small_data_warning
from normfree.train.config import TrainConfig
from normfree.train.recipes import load_recipe
from normfree.train.trainer import Trainer

RESNET26 = 13_952_331  # nf_resnet26 at 3 classes, as in the measured case


def test_warning_for_a_large_model_with_almost_no_warmup():
    text = small_data_warning("nf_resnet26", RESNET26, 256, 128, 0.1, 1.0, 2, 0.0)
    assert "2 step(s) per epoch" in text and "warmup is 2 step(s)" in text and "14.0M-parameter nf_resnet26" in text
    assert "--agc-clip 0.01" in text and "--recipe nf_cifar" in text


@pytest.mark.parametrize("why, args", [
    ("small model", ("nf_cifar_resnet20", 272_474, 1500, 128, 0.1, 1.0, 11, 0.0)),
    ("CIFAR-size data", ("nf_resnet26", RESNET26, 50_000, 128, 0.1, 1.0, 390, 0.0)),
    ("long warmup", ("nf_resnet26", RESNET26, 256, 128, 0.1, 25.0, 2, 0.0)),
    ("AGC on", ("nf_resnet26", RESNET26, 256, 128, 0.1, 1.0, 2, 0.01)),
])
def test_no_warning_where_the_defaults_train(why, args):
    assert small_data_warning(*args) is None, why


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(data="synthetic", out_dir=str(tmp_path / "run"), epochs=1, device="cpu", **kw)


def test_trainer_warns_once_before_training(tmp_path):
    with pytest.warns(UserWarning, match="diverges in its first steps") as seen:
        Trainer(_cfg(tmp_path, model="nf_resnet26"))  # 512 images at batch 128: 4 warmup steps
    assert sum("diverges in its first steps" in str(w.message) for w in seen) == 1


def test_trainer_is_quiet_for_the_quick_start(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(_cfg(tmp_path, model="nf_cifar_resnet20", model_kwargs={"width": 0.25}, batch_size=64))


@pytest.mark.slow
def test_the_measured_case(tmp_path):
    """The numbers in docs/training.md: nf_resnet26 on 256 images diverges at the defaults and trains with
    AGC (minutes on a CPU); the small model of the nf_cifar recipe trains smoothly."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (3, 1, 1, 3))
    for split, n in (("train", 256), ("test", 64)):
        y = rng.integers(0, 3, n)
        np.savez(tmp_path / f"{split}.npz", x=(base[y] + rng.integers(0, 56, (n, 32, 32, 3))).astype(np.uint8), y=y)
    cfg = dict(model="nf_resnet26", data=f"npz:{tmp_path}", epochs=8, device="cpu")
    with pytest.raises(NormfreeError, match="diverging|became nan"), pytest.warns(UserWarning):
        Trainer(TrainConfig(out_dir=str(tmp_path / "default"), **cfg)).fit()
    summary = Trainer(TrainConfig(out_dir=str(tmp_path / "agc"), agc_clip=0.01, **cfg)).fit()
    assert summary["train_loss"] < 1.0
    small = {**load_recipe("nf_cifar"), "data": cfg["data"], "epochs": 8, "device": "cpu"}
    assert Trainer(TrainConfig(out_dir=str(tmp_path / "small"), **small)).fit()["train_loss"] < 0.01
