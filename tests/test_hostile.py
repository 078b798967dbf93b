"""The hostile-input battery: bad or malicious input to every command and to the Python API.

Every CLI case must end with exit status 2 and exactly one stderr line ``normfree CMD: error: ...`` that
names the offending value, and no traceback; every API case must raise the project's error with a
one-line message. Malicious pickles would create a marker file if anything unpickled them naively; the
marker must never appear. Cases run in-process (``normfree.cli.main``) except the few that test the
``python -m`` entry points.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import normfree
from normfree import create_model
from normfree.analysis import diagnose, signal_propagation
from normfree.cli import main
from normfree.init import autoinit
from normfree.errors import CheckpointError, ConfigError, DataError, ModelSpecError, NormfreeError
from normfree.safeio import check_safetensors
from normfree.train.checkpoint import load_checkpoint
from normfree.train.config import TrainConfig
from normfree.train.data import load_data
from normfree.train.trainer import Trainer


pytestmark = pytest.mark.usefixtures("one_thread")


RNG = np.random.default_rng(19)  # random bytes, the same ones every run


class Evil:
    """Unpickling this runs ``touch MARKER`` (through os.system) in a naive unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _npz(folder: Path, train: tuple, test: tuple | None = None) -> Path:
    folder.mkdir(parents=True)
    for split, (x, y) in (("train", train), ("test", test or train)):
        np.savez(folder / f"{split}.npz", x=x, y=y)
    return folder


def _images(n: int, c: int = 3, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, c), dtype=np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every bad file the battery feeds in, plus one finished tiny run to resume and evaluate."""
    root = tmp_path_factory.mktemp("hostile")
    f: dict[str, Path] = {"root": root, "marker": root / "PWNED"}
    labels = np.arange(32) % 4
    f["npz_good"] = _npz(root / "good", (_images(32), labels))
    f["npz_neg"] = _npz(root / "neg", (_images(32), np.where(labels == 3, -1, labels)))
    f["npz_float"] = _npz(root / "float", (_images(32), labels.astype(np.float32) + 0.5))
    f["npz_chan"] = _npz(root / "chan", (_images(32), labels), (_images(32, c=1), labels))
    f["npz_dtype"] = _npz(root / "dtype", (_images(32).astype(np.float32), labels))
    f["npz_many"] = _npz(root / "many", (_images(32), np.arange(32) % 10))
    f["npz_32px"] = _npz(root / "px32", (_images(32, size=32), np.arange(32) % 10))
    trunc = root / "trunc"
    trunc.mkdir()
    for split in ("train", "test"):
        np.savez(trunc / f"{split}.npz", x=_images(32), y=labels)
        raw = (trunc / f"{split}.npz").read_bytes()
        (trunc / f"{split}.npz").write_bytes(raw[: len(raw) // 2])
    f["npz_trunc"] = trunc
    obj = root / "object"
    obj.mkdir()
    for split in ("train", "test"):
        np.savez(obj / f"{split}.npz", x=np.array([Evil(f["marker"])] * 4, dtype=object), y=labels[:4])
    f["npz_object"] = obj
    f["npz_noX"] = root / "nox.npz"
    np.savez(f["npz_noX"], images=_images(4))

    evil_cifar = root / "cifar_evil" / "cifar-10-batches-py"
    evil_cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (evil_cifar / name).write_bytes(pickle.dumps({"data": Evil(f["marker"]), "labels": [0]}, protocol=2))
    f["cifar_evil"] = evil_cifar.parent
    junk_cifar = root / "cifar_junk"
    junk_cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (junk_cifar / name).write_bytes(RNG.bytes(500))
    f["cifar_junk"] = junk_cifar
    f["cifar_empty"] = root / "cifar_empty"
    f["cifar_empty"].mkdir()

    f["random"] = root / "random.safetensors"
    f["random"].write_bytes(RNG.bytes(4096))
    weights = {k: v.contiguous() for k, v in create_model("nf_cifar_resnet20", width=0.25).state_dict().items()}
    f["plain"] = root / "plain.safetensors"
    save_file(weights, f["plain"])
    f["trunc_ckpt"] = root / "trunc.safetensors"
    f["trunc_ckpt"].write_bytes(f["plain"].read_bytes()[:-1000])
    f["huge_header"] = root / "huge.safetensors"
    f["huge_header"].write_bytes(struct.pack("<Q", 2**62) + b"{}")
    f["list_header"] = root / "list.safetensors"
    f["list_header"].write_bytes(struct.pack("<Q", 2) + b"[]")
    f["meta_missing"] = root / "meta.safetensors"
    save_file(weights, f["meta_missing"], metadata={"normfree": json.dumps({"step": 3})})
    f["evil_pt"] = root / "evil.pt"
    torch.save({"w": torch.ones(2), "x": Evil(f["marker"])}, f["evil_pt"])
    f["evil_pkl"] = root / "F0_haiku.npz"
    f["evil_pkl"].write_bytes(pickle.dumps({"NFNet/~/linear": {"w": Evil(f["marker"])}}))
    f["junk_pkl"] = root / "junk.pkl"
    f["junk_pkl"].write_bytes(RNG.bytes(300))
    f["trunc_zip"] = root / "params.npz"
    np.savez(f["trunc_zip"], **{"NFNet/~/linear/w": np.ones((4, 4), np.float32)})
    f["trunc_zip"].write_bytes(f["trunc_zip"].read_bytes()[:-40])
    f["a_file"] = root / "regular_file"
    f["a_file"].write_text("not a folder")
    f["pth"] = root / "weights.pth"
    torch.save(weights, f["pth"])

    f["run"] = root / "run"
    cfg = TrainConfig(model="nf_cifar_resnet20", model_kwargs={"width": 0.25}, data="synthetic",
                      out_dir=str(f["run"]), train_subset=32, test_subset=16, epochs=2, batch_size=16,
                      eval_batch_size=16, log_every=1)
    Trainer(cfg).fit()
    f["last"] = f["run"] / "last.safetensors"
    f["other_run"] = root / "other_run"
    Trainer(TrainConfig(**{**cfg.to_dict(), "out_dir": str(f["other_run"]), "epochs": 1})).fit()
    f["comparison"] = root / "comparison"
    (f["comparison"] / "runs" / "nf_cifar_resnet20_bs16").mkdir(parents=True)
    (f["comparison"] / "runs" / "nf_cifar_resnet20_bs16" / "summary.json").write_text("{}")
    return f


TRAIN = ["train", "--model", "nf_cifar_resnet20", "--model-kwargs", '{"width": 0.25}', "--data", "synthetic",
         "--train-subset", "32", "--test-subset", "16", "--epochs", "1", "--batch-size", "16",
         "--out-dir", "{root}/new_run"]


def train(*extra: str) -> list[str]:
    """``normfree train`` on a tiny valid config, with ``extra`` flags overriding (later flags win)."""
    return [*TRAIN, *extra]


CLI_CASES = [
    # ---- train: every numeric option outside its domain ----------------------------------------
    ("train-eval-every-0", train("--eval-every", "0"), "eval_every (--eval-every) = 0"),
    ("train-log-every-0", train("--log-every", "0"), "log_every (--log-every) = 0"),
    ("train-eval-batch-0", train("--eval-batch-size", "0"), "eval_batch_size (--eval-batch-size) = 0"),
    ("train-device-bogus", train("--device", "bogus"), "device (--device) = 'bogus'"),
    ("train-device-cuda-99", train("--device", "cuda:99"), "'cuda:99'"),
    ("train-num-classes-0", train("--num-classes", "0"), "num_classes (--num-classes) = 0"),
    ("train-num-classes-1000", train("--num-classes", "1000"), "= 1000 but synthetic has 4 classes"),
    ("train-num-classes-2", train("--num-classes", "2"), "= 2 but synthetic has 4 classes"),
    ("train-min-lr-above-lr", train("--lr", "0.1", "--min-lr", "1"), "min_lr (--min-lr) = 1 is above lr"),
    ("train-mixup-negative", train("--mixup", "-1"), "mixup (--mixup) = -1"),
    ("train-cutmix-negative", train("--cutmix", "-0.5"), "cutmix (--cutmix) = -0.5"),
    ("train-lr-nan", train("--lr", "nan"), "lr (--lr) = nan"),
    ("train-lr-inf", train("--lr", "inf"), "lr (--lr) = inf"),
    ("train-lr-negative", train("--lr", "-1"), "lr (--lr) = -1"),
    ("train-lr-zero", train("--lr", "0"), "lr (--lr) = 0"),
    ("train-lr-text", train("--lr", "fast"), "invalid float value: 'fast'"),
    ("train-epochs-0", train("--epochs", "0"), "epochs (--epochs) = 0"),
    ("train-epochs-float", train("--epochs", "1e400"), "invalid int value: '1e400'"),
    ("train-batch-0", train("--batch-size", "0"), "batch_size (--batch-size) = 0"),
    ("train-accum-indivisible", train("--batch-size", "10", "--accum-steps", "4"), "divisible by accum_steps"),
    ("train-batch-above-data", train("--batch-size", "100000"), "batch_size 100000 is larger than"),
    ("train-label-smoothing-1", train("--label-smoothing", "1"), "label_smoothing (--label-smoothing) = 1"),
    ("train-ema-decay-1.5", train("--ema-decay", "1.5"), "ema_decay (--ema-decay) = 1.5"),
    ("train-momentum-1", train("--momentum", "1"), "momentum (--momentum) = 1"),
    ("train-nesterov-no-momentum", train("--momentum", "0"), "nesterov (--nesterov) needs momentum"),
    ("train-weight-decay-negative", train("--weight-decay", "-1"), "weight_decay (--weight-decay) = -1"),
    ("train-agc-negative", train("--agc-clip", "-0.01"), "agc_clip (--agc-clip) = -0.01"),
    ("train-agc-eps-0", train("--agc-eps", "0"), "agc_eps (--agc-eps) = 0"),
    ("train-warmup-beyond-epochs", train("--warmup-epochs", "5"), "warmup_epochs (--warmup-epochs) = 5"),
    ("train-seed-negative", train("--seed", "-1"), "seed (--seed) = -1"),
    ("train-image-size-0", train("--image-size", "0"), "image_size (--image-size) = 0"),
    ("train-subset-negative", train("--train-subset", "-1"), "train_subset (--train-subset) = -1"),
    ("train-spp-every-negative", train("--spp-every", "-1"), "spp_every (--spp-every) = -1"),
    ("train-lr-scale-negative", train("--bias-lr-scale", "-2"), "bias_lr_scale (--bias-lr-scale) = -2"),
    ("train-param-groups-bogus", train("--param-groups", "bogus"), "param_groups (--param-groups) = 'bogus'"),
    ("train-divergence-bogus", train("--divergence", "maybe"), "divergence (--divergence) = 'maybe'"),
    ("train-divergence-factor-1", train("--divergence-factor", "1"), "divergence_factor (--divergence-factor) = 1"),
    ("train-bool-text", train("--augment", "maybe"), "expected true/false, got 'maybe'"),
    ("train-init-bogus", train("--init", "lsuv"), "init must be one of default, auto, gradinit, autoinit"),
    ("train-init-option-text", train("--init", "gradinit:iters=many"), "--init gradinit:iters = 'many'"),
    ("train-dp-epsilon-negative", train("--dp", "--epsilon", "-1"), "epsilon must be > 0 (got -1.0)"),
    # ---- train: models --------------------------------------------------------------------------
    ("train-model-unknown", train("--model", "nf_cifar_resnet21"), "'nf_cifar_resnet21'"),
    ("train-model-kwargs-not-json", train("--model-kwargs", "width=2"), "'width=2'"),
    ("train-model-kwargs-list", train("--model-kwargs", "[1, 2]"), "model_kwargs (--model-kwargs) = [1, 2]"),
    ("train-width-inf", train("--model-kwargs", '{"width": 1e400}'), "width=inf is not a finite number"),
    ("train-width-1000", train("--model-kwargs", '{"width": 1000}'), "parameters"),
    ("train-model-option-unknown", train("--model-kwargs", '{"widht": 2}'), "'widht'"),
    # ---- train: data ----------------------------------------------------------------------------
    ("train-data-bogus", train("--data", "bogus"), "unknown data spec 'bogus'"),
    ("train-data-missing", train("--data", "npz:{root}/nope"), "nope' does not exist"),
    ("train-npz-truncated", train("--data", "npz:{npz_trunc}"), "train.npz (truncated or not an .npz"),
    ("train-npz-negative-label", train("--data", "npz:{npz_neg}"), "label -1 is outside"),
    ("train-npz-float-labels", train("--data", "npz:{npz_float}"), "labels must be integers, got dtype float32"),
    ("train-npz-channel-mismatch", train("--data", "npz:{npz_chan}"), "3 channels but the test split 1"),
    ("train-npz-float-images", train("--data", "npz:{npz_dtype}"), "got float32"),
    ("train-npz-object-arrays", train("--data", "npz:{npz_object}"), "allow_pickle=False"),
    ("train-cifar-malicious", train("--data", "cifar10:{cifar_evil}"), "references posix.system"),
    ("train-cifar-random-bytes", train("--data", "cifar10:{cifar_junk}"), "data_batch_1: not a plain pickle"),
    ("train-cifar-missing-batches", train("--data", "cifar10:{cifar_empty}"), "data_batch_1 not found"),
    # ---- train: config files and recipes ----------------------------------------------------------
    ("train-config-missing", train("--config", "{root}/nope.yaml"), "nope.yaml does not exist"),
    ("train-config-bad-yaml", train("--config", "{root}/bad.yaml"), "bad.yaml is not valid YAML"),
    ("train-config-list", train("--config", "{root}/list.yaml"), "list.yaml must hold a mapping"),
    ("train-config-unknown-key", train("--config", "{root}/unknown.yaml"), "'learning_rate'"),
    ("train-config-lr-text", train("--config", "{root}/lrtext.yaml"), "lr (--lr) = 'fast'"),
    ("train-config-bool-text", train("--config", "{root}/booltext.yaml"), "augment (--augment) = 'sometimes'"),
    ("train-recipe-unknown", train("--recipe", "nope"), "unknown recipe 'nope'"),
    # ---- train: checkpoints and run folders -----------------------------------------------------------
    ("train-resume-random-bytes", train("--resume", "{random}"), "random.safetensors is not a safetensors file"),
    ("train-resume-truncated", train("--resume", "{trunc_ckpt}"), "trunc.safetensors is truncated or corrupt"),
    ("train-resume-huge-header", train("--resume", "{huge_header}"), "header length 4611686018427387904"),
    ("train-resume-plain-weights", train("--resume", "{plain}"), "plain.safetensors is a safetensors file but"),
    ("train-resume-missing-meta", train("--resume", "{meta_missing}"), "without ['model'"),
    ("train-resume-missing", train("--resume", "{root}/nope.safetensors"), "nope.safetensors does not exist"),
    ("train-resume-finished", ["train", "--resume", "{last}"], "is already finished (4 steps"),
    ("train-resume-fewer-epochs", ["train", "--resume", "{last}", "--epochs", "1"], "already trained 2 epochs"),
    ("train-resume-other-lr", ["train", "--resume", "{last}", "--lr", "0.5", "--epochs", "3"],
     "differs from the checkpoint's in lr: 0.1 -> 0.5"),
    ("train-resume-other-model", ["train", "--resume", "{last}", "--model", "bn_cifar_resnet20"],
     "model: 'nf_cifar_resnet20' -> 'bn_cifar_resnet20'"),
    ("train-resume-into-other-run", ["train", "--resume", "{last}", "--epochs", "3", "--out-dir", "{other_run}"],
     "other_run already holds a run"),
    ("train-into-finished-run", train("--out-dir", "{run}"), "/run already holds a run; resume that run"),
    ("train-out-under-file", train("--out-dir", "{a_file}/run"), "cannot write to output folder"),
    ("train-out-empty", train("--out-dir", ""), "out_dir (--out-dir) = ''"),
    # ---- eval ---------------------------------------------------------------------------------------
    ("eval-missing", ["eval", "{root}/nope.safetensors"], "nope.safetensors does not exist"),
    ("eval-random-bytes", ["eval", "{random}"], "random.safetensors is not a safetensors file"),
    ("eval-truncated", ["eval", "{trunc_ckpt}"], "trunc.safetensors is truncated or corrupt"),
    ("eval-list-header", ["eval", "{list_header}"], "its header is not a JSON object"),
    ("eval-plain-weights", ["eval", "{plain}"], "not a normfree train checkpoint"),
    ("eval-missing-meta", ["eval", "{meta_missing}"], "without ['model'"),
    ("eval-subset-negative", ["eval", "{last}", "--test-subset", "-1"], "--test-subset = -1"),
    ("eval-batch-0", ["eval", "{last}", "--batch-size", "0"], "--batch-size = 0"),
    ("eval-device-bogus", ["eval", "{last}", "--device", "gpu"], "--device = 'gpu'"),
    ("eval-data-channels", ["eval", "{last}", "--data", "npz:{npz_chan}"], "1 channels but the checkpoint's"),
    ("eval-data-more-classes", ["eval", "{last}", "--data", "npz:{npz_many}"], "labels up to 9"),
    ("eval-data-bogus", ["eval", "{last}", "--data", "folder:/x"], "unknown data spec 'folder:/x'"),
    # ---- spp ----------------------------------------------------------------------------------------
    ("spp-batch-1", ["spp", "nf_cifar_resnet20", "--batch-size", "1", "--out-dir", "{root}/spp"], "--batch-size = 1"),
    ("spp-batch-huge", ["spp", "nf_cifar_resnet20", "--batch-size", "10000000", "--out-dir", "{root}/spp"],
     "--batch-size 10000000 at 32x32 needs about"),
    ("spp-input-size-0", ["spp", "nf_cifar_resnet20", "--image-size", "0", "--out-dir", "{root}/spp"],
     "--image-size = 0"),
    ("spp-input-size-negative", ["spp", "nf_cifar_resnet20", "--image-size", "-5", "--out-dir", "{root}/spp"],
     "--image-size = -5"),
    ("spp-skipinit-nan", ["spp", "nf_cifar_resnet20", "--skipinit-gain", "nan", "--out-dir", "{root}/spp"],
     "--skipinit-gain = nan"),
    ("spp-seed-negative", ["spp", "nf_cifar_resnet20", "--seed", "-3", "--out-dir", "{root}/spp"], "--seed = -3"),
    ("spp-device-bogus", ["spp", "nf_cifar_resnet20", "--device", "tpu", "--out-dir", "{root}/spp"],
     "--device = 'tpu'"),
    ("spp-out-under-file", ["spp", "nf_cifar_resnet20", "--out-dir", "{a_file}/spp"], "regular_file is a file"),
    ("spp-checkpoint-random", ["spp", "nf_cifar_resnet20", "--checkpoint", "{random}", "--out-dir", "{root}/spp"],
     "random.safetensors is not a safetensors file"),
    ("spp-checkpoint-truncated", ["spp", "nf_cifar_resnet20", "--checkpoint", "{trunc_ckpt}", "--out-dir",
                                  "{root}/spp"], "trunc.safetensors is truncated"),
    ("spp-checkpoint-missing", ["spp", "nf_cifar_resnet20", "--checkpoint", "{root}/nope.pt", "--out-dir",
                                "{root}/spp"], "nope.pt does not exist"),
    ("spp-checkpoint-malicious-pt", ["spp", "nf_cifar_resnet20", "--checkpoint", "{evil_pt}", "--out-dir",
                                     "{root}/spp"], "evil.pt as a torch state dict: it references posix.system"),
    ("spp-checkpoint-wrong-model", ["spp", "nf_cifar_resnet56", "--checkpoint", "{last}", "--out-dir",
                                    "{root}/spp"], "holds a nf_cifar_resnet20, not a nf_cifar_resnet56"),
    ("spp-checkpoint-wrong-width", ["spp", "nf_cifar_resnet20:width=0.5", "--checkpoint", "{last}", "--out-dir",
                                    "{root}/spp"], "does not fit the model"),
    ("spp-checkpoint-two-models", ["spp", "nf_cifar_resnet20", "nf_cifar_resnet32", "--checkpoint", "{last}",
                                   "--out-dir", "{root}/spp"], "--checkpoint needs exactly one model"),
    ("spp-data-truncated", ["spp", "nf_cifar_resnet20", "--data", "npz:{npz_trunc}", "--out-dir", "{root}/spp"],
     "test.npz (truncated or not an .npz"),
    ("spp-data-file-not-spec", ["spp", "nf_cifar_resnet20", "--data", "{npz_noX}", "--out-dir", "{root}/spp"],
     "unknown data spec"),
    ("spp-data-no-test-npz", ["spp", "nf_cifar_resnet20", "--data", "npz:{root}", "--out-dir", "{root}/spp"],
     "test.npz not found"),
    ("spp-width-inf", ["spp", "nf_cifar_resnet20:width=1e400", "--out-dir", "{root}/spp"], "width=inf"),
    ("spp-width-huge", ["spp", "nf_cifar_resnet20:width=1000", "--out-dir", "{root}/spp"], "parameters"),
    ("spp-option-unknown", ["spp", "nf_cifar_resnet20:widht=2", "--out-dir", "{root}/spp"], "'widht'"),
    ("spp-option-no-value", ["spp", "nf_cifar_resnet20:width", "--out-dir", "{root}/spp"], "bad model option 'width'"),
    ("spp-model-unknown", ["spp", "nf_cifar_resnet2O", "--out-dir", "{root}/spp"], "'nf_cifar_resnet2O'"),
    # ---- compare ------------------------------------------------------------------------------------
    ("compare-batch-0", ["compare", "nf_cifar_resnet20", "--data", "synthetic", "--out-dir", "{root}/cmp",
                         "--batch-size", "0"], "--batch-size = 0"),
    ("compare-lr-batch-0", ["compare", "nf_cifar_resnet20", "--data", "synthetic", "--out-dir", "{root}/cmp",
                            "--lr-batch", "0"], "--lr-batch = 0"),
    ("compare-spp-batch-1", ["compare", "nf_cifar_resnet20", "--data", "synthetic", "--out-dir", "{root}/cmp",
                             "--spp-batch-size", "1"], "--spp-batch-size = 1"),
    ("compare-epochs-0", ["compare", "nf_cifar_resnet20", "--data", "synthetic", "--out-dir", "{root}/cmp",
                          "--epochs", "0"], "epochs (--epochs) = 0"),
    ("compare-lr-nan", ["compare", "nf_cifar_resnet20", "--data", "synthetic", "--out-dir", "{root}/cmp",
                        "--lr", "nan"], "lr (--lr) = nan"),
    ("compare-init-bogus", ["compare", "nf_cifar_resnet20", "--data", "synthetic", "--out-dir", "{root}/cmp",
                            "--init", "lsuv"], "init must be one of"),
    ("compare-data-bogus", ["compare", "nf_cifar_resnet20", "--data", "imagenet", "--out-dir", "{root}/cmp"],
     "unknown data spec 'imagenet'"),
    ("compare-model-unknown", ["compare", "nf_cifar_resnet2O", "--data", "synthetic", "--out-dir", "{root}/cmp"],
     "'nf_cifar_resnet2O'"),
    ("compare-out-under-file", ["compare", "nf_cifar_resnet20", "--data", "synthetic", "--out-dir",
                                "{a_file}/cmp", "-b", "16"], "regular_file is a file"),
    ("compare-into-old-comparison", ["compare", "nf_cifar_resnet20", "--data", "synthetic", "--out-dir",
                                     "{comparison}", "-b", "16"], "already holds a comparison"),
    # ---- speedrun -----------------------------------------------------------------------------------
    ("speedrun-no-data", ["speedrun"], "--data is required"),
    ("speedrun-seeds-0", ["speedrun", "--data", "npz:{npz_32px}", "--seeds", "0"], "--seeds = 0"),
    ("speedrun-threads-negative", ["speedrun", "--data", "npz:{npz_32px}", "--threads", "-1"], "--threads = -1"),
    ("speedrun-subset-negative", ["speedrun", "--data", "npz:{npz_32px}", "--train-subset", "-1"],
     "--train-subset = -1"),
    ("speedrun-device-bogus", ["speedrun", "--data", "npz:{npz_32px}", "--device", "tpu"], "--device = 'tpu'"),
    ("speedrun-recipe-unknown", ["speedrun", "--data", "npz:{npz_32px}", "--recipe", "nf_fast"], "'nf_fast'"),
    ("speedrun-set-unknown", ["speedrun", "--data", "npz:{npz_32px}", "--set", "ema=0.9"],
     "unknown speedrun setting(s) ['ema']"),
    ("speedrun-set-no-value", ["speedrun", "--data", "npz:{npz_32px}", "--set", "agc_clip"], "bad --set 'agc_clip'"),
    ("speedrun-set-batch-0", ["speedrun", "--data", "npz:{npz_32px}", "--set", "batch_size=0"],
     "speedrun setting batch_size = 0: must be an integer >= 1"),
    ("speedrun-epochs-0", ["speedrun", "--data", "npz:{npz_32px}", "--epochs", "0"], "speedrun setting epochs = 0"),
    ("speedrun-set-lr-text", ["speedrun", "--data", "npz:{npz_32px}", "--set", "lr=fast"],
     "speedrun setting lr = 'fast'"),
    ("speedrun-set-lookahead-0", ["speedrun", "--data", "npz:{npz_32px}", "--set", "lookahead_every=0"],
     "speedrun setting lookahead_every = 0"),
    ("speedrun-set-tta-3", ["speedrun", "--data", "npz:{npz_32px}", "--set", "tta_level=3"],
     "speedrun setting tta_level = 3"),
    ("speedrun-set-flip-text", ["speedrun", "--data", "npz:{npz_32px}", "--set", "flip=sometimes"],
     "speedrun setting flip = 'sometimes'"),
    ("speedrun-set-kwargs-number", ["speedrun", "--data", "npz:{npz_32px}", "--set", "model_kwargs=3"],
     "speedrun setting model_kwargs = 3"),
    ("speedrun-data-8px", ["speedrun", "--data", "npz:{npz_good}"], "needs 32×32 RGB"),
    ("speedrun-batch-above-data", ["speedrun", "--data", "npz:{npz_32px}"], "32 training images is fewer than "
     "one batch of 1024"),
    # ---- bench --------------------------------------------------------------------------------------
    ("bench-batch-0", ["bench", "nf_cifar_resnet20", "--batch-size", "0"], "--batch-size = 0"),
    ("bench-size-0", ["bench", "nf_cifar_resnet20", "--image-size", "0"], "--image-size = 0"),
    ("bench-repeats-0", ["bench", "nf_cifar_resnet20", "--repeats", "0"], "--repeats = 0"),
    ("bench-warmup-negative", ["bench", "nf_cifar_resnet20", "--warmup", "-1"], "--warmup = -1"),
    ("bench-threads-0", ["bench", "nf_cifar_resnet20", "--threads", "0"], "--threads = 0"),
    ("bench-device-bogus", ["bench", "nf_cifar_resnet20", "--device", "bogus"], "--device = 'bogus'"),
    ("bench-json-under-file", ["bench", "nf_cifar_resnet20", "--json", "{a_file}/out.json"], "regular_file is a file"),
    ("bench-deploy-train", ["bench", "nf_cifar_resnet20", "--deploy"], "--deploy measures inference"),
    ("bench-model-unknown", ["bench", "nf_cifar_resnet2O"], "'nf_cifar_resnet2O'"),
    ("bench-batch-huge", ["bench", "nf_cifar_resnet20", "--batch-size", "10000000", "--image-size", "32", "--no-baseline"],
     "--batch-size 10000000 at 32x32 needs about"),
    ("bench-width-inf", ["bench", "nf_cifar_resnet20:width=1e400", "--no-baseline"], "width=inf"),
    # ---- convert ------------------------------------------------------------------------------------
    ("convert-src-missing", ["convert", "{root}/nope.npz", "--from", "deepmind", "--model", "nfnet_f0",
                             "--out", "{root}/o.safetensors"], "nope.npz does not exist"),
    ("convert-deepmind-malicious", ["convert", "{evil_pkl}", "--from", "deepmind", "--model", "nfnet_f0",
                                    "--allow-pickle", "--out", "{root}/o.safetensors"], "references posix.system"),
    ("convert-deepmind-pickle-refused", ["convert", "{evil_pkl}", "--from", "deepmind", "--model", "nfnet_f0",
                                         "--out", "{root}/o.safetensors"], "pass allow_pickle=True"),
    ("convert-deepmind-random", ["convert", "{junk_pkl}", "--from", "deepmind", "--model", "nfnet_f0",
                                 "--allow-pickle", "--out", "{root}/o.safetensors"], "junk.pkl: not a plain pickle"),
    ("convert-deepmind-truncated-zip", ["convert", "{trunc_zip}", "--from", "deepmind", "--model", "nfnet_f0",
                                        "--out", "{root}/o.safetensors"], "params.npz"),
    ("convert-timm-malicious", ["convert", "{evil_pt}", "--from", "timm", "--model", "nf_resnet50",
                                "--allow-pickle", "--out", "{root}/o.safetensors"], "evil.pt as a torch state dict: it references posix.system"),
    ("convert-timm-pickle-refused", ["convert", "{pth}", "--from", "timm", "--model", "nf_resnet50",
                                     "--out", "{root}/o.safetensors"], "weights.pth is not a .safetensors file"),
    ("convert-timm-random", ["convert", "{random}", "--from", "timm", "--model", "nf_resnet50",
                             "--out", "{root}/o.safetensors"], "random.safetensors is not a safetensors file"),
    ("convert-timm-unknown", ["convert", "{plain}", "--from", "timm", "--model", "resnet9000",
                              "--out", "{root}/o.safetensors"], "no timm mapping for 'resnet9000'"),
    ("convert-out-under-file", ["convert", "{plain}", "--from", "timm", "--model", "nf_resnet50",
                                "--out", "{a_file}/o.safetensors"], "regular_file is a file"),
    ("convert-num-classes-0", ["convert", "{plain}", "--from", "timm", "--model", "nf_resnet50",
                               "--num-classes", "0", "--out", "{root}/o.safetensors"], "--num-classes = 0"),
    ("convert-out-is-folder", ["convert", "{plain}", "--from", "timm", "--model", "nf_resnet50",
                               "--out", "{root}"], "is a folder"),
]


@pytest.fixture(scope="module")
def config_files(files):
    root = files["root"]
    (root / "bad.yaml").write_text("lr: [0.1\n")
    (root / "list.yaml").write_text("- lr\n- 0.1\n")
    (root / "unknown.yaml").write_text("learning_rate: 0.1\n")
    (root / "lrtext.yaml").write_text("lr: fast\n")
    (root / "booltext.yaml").write_text("augment: sometimes\n")
    return files


def _fill(argv: list[str], files: dict[str, Path]) -> list[str]:
    """``{name}`` → the path of fixture file ``name`` (JSON braces are left alone)."""
    return [re.sub(r"\{(\w+)\}", lambda m: str(files[m.group(1)]), a) for a in argv]


def _assert_one_line_error(err: str, command: str, needle: str) -> None:
    """What the terminal shows (progress bars erased with carriage returns) is one error line."""
    lines = re.sub(r"[^\n]*\r", "", err).strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"normfree {command}: error: "), err
    assert needle in lines[0], err
    assert "Traceback" not in err


def run_cli(argv: list[str]) -> int:
    """``normfree ARGV`` in-process; argparse's usage errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


@pytest.mark.parametrize("argv, needle", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_case(argv, needle, config_files, capsys):
    files = config_files
    argv = _fill(argv, files)
    assert run_cli(argv) == 2
    _assert_one_line_error(capsys.readouterr().err, argv[0], _fill([needle], files)[0])
    assert not files["marker"].exists(), "a file ran code"


def test_malicious_files_are_really_malicious(files, tmp_path):
    """The crafted files do run code when unpickled naively, so the battery's 'marker absent' bites."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps({"data": Evil(marker)}))
    assert marker.exists()
    assert not files["marker"].exists()


API_CASES = [
    ("create-model-width-inf", lambda f: create_model("nf_resnet50", width=float("inf")), ModelSpecError,
     "width=inf is not a finite number"),
    ("create-model-width-nan", lambda f: create_model("nf_resnet50", width=float("nan")), ModelSpecError,
     "width=nan"),
    ("create-model-huge", lambda f: create_model("nf_resnet50", width=1000), ModelSpecError,
     "parameters"),
    ("create-model-width-text", lambda f: create_model("nf_cifar_resnet20", width="half"), ModelSpecError,
     "width must be a positive number, got 'half'"),
    ("create-model-name-number", lambda f: create_model(3), ModelSpecError, "a model name is a string"),
    ("autoinit-not-a-module", lambda f: autoinit("nf_cifar_resnet20"), ModelSpecError,
     "AutoInit initializes an nn.Module, got str"),
    ("list-models-pattern-number", lambda f: normfree.list_models(3), ModelSpecError, "got 3"),
    ("create-model-device-unknown", lambda f: create_model("nf_cifar_resnet20", device="tpu"), ModelSpecError,
     "device='tpu' cannot hold tensors"),
    ("create-model-device-absent", lambda f: create_model("nf_cifar_resnet20", device="cuda:99"), ModelSpecError,
     "device='cuda:99' cannot hold tensors"),
    ("create-model-dtype-text", lambda f: create_model("nf_cifar_resnet20", dtype="float32"), ModelSpecError,
     "floating-point torch.dtype such as torch.float32 or torch.bfloat16, got 'float32'"),
    ("create-model-dtype-int", lambda f: create_model("nf_cifar_resnet20", dtype=torch.int64), ModelSpecError,
     "got torch.int64"),
    ("create-model-in-chans-0", lambda f: create_model("nf_resnet50", in_chans=0), ModelSpecError,
     "'in_chans': 0"),
    ("load-data-truncated", lambda f: load_data(f"npz:{f['npz_trunc']}", "train"), DataError, "truncated"),
    ("load-data-negative", lambda f: load_data(f"npz:{f['npz_neg']}", "train"), DataError, "label -1"),
    ("load-data-bogus", lambda f: load_data("mnist", "train"), DataError, "unknown data spec 'mnist'"),
    ("load-data-colon-only", lambda f: load_data("npz:", "train"), DataError, "data folder '' does not exist"),
    ("load-data-cifar-malicious", lambda f: load_data(f"cifar10:{f['cifar_evil']}", "train"), DataError,
     "references posix.system"),
    ("load-data-cifar-junk", lambda f: load_data(f"cifar10:{f['cifar_junk']}", "test"), DataError,
     "test_batch: not a plain pickle"),
    ("spp-nan-input", lambda f: signal_propagation(_tiny(), _batch(float("nan"))), DataError,
     "1 NaN or infinite value(s)"),
    ("spp-inf-input", lambda f: signal_propagation(_tiny(), _batch(float("inf"))), DataError,
     "1 NaN or infinite value(s)"),
    ("spp-batch-1", lambda f: signal_propagation(_tiny(), torch.randn(1, 3, 32, 32)), DataError, "batch of 1"),
    ("spp-wrong-channels", lambda f: signal_propagation(_tiny(), torch.randn(4, 1, 32, 32)), DataError,
     "1 channels"),
    ("config-lr-text", lambda f: TrainConfig.from_dict({"lr": "fast"}), ConfigError, "lr (--lr) = 'fast'"),
    ("config-epochs-bool", lambda f: TrainConfig(epochs=True), ConfigError, "epochs (--epochs) = True"),
    ("config-epochs-fraction", lambda f: TrainConfig(epochs=2.5), ConfigError, "epochs (--epochs) = 2.5"),
    ("config-model-kwargs-keys", lambda f: TrainConfig(model_kwargs={1: 2}), ConfigError, "model_kwargs"),
    ("trainer-into-run", lambda f: Trainer(TrainConfig(data="synthetic", out_dir=str(f["run"]))), ConfigError,
     "already holds a run"),
    ("checkpoint-random", lambda f: load_checkpoint(f["random"]), CheckpointError, "not a safetensors file"),
    ("checkpoint-huge-header", lambda f: check_safetensors(f["huge_header"]), CheckpointError, "header length"),
    ("deepmind-malicious", lambda f: _from_deepmind(f["evil_pkl"]), CheckpointError, "references posix.system"),
]


def _tiny():
    torch.manual_seed(0)
    return create_model("nf_cifar_resnet20", width=0.25)


def _batch(value: float) -> torch.Tensor:
    x = torch.randn(4, 3, 32, 32)
    x[1, 2, 3, 4] = value
    return x


def _from_deepmind(path: Path):
    from normfree.convert import from_deepmind

    return from_deepmind("nf_cifar_resnet20", path, allow_pickle=True)


@pytest.mark.parametrize("call, error, needle", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_case(call, error, needle, files):
    with pytest.raises(error) as err:
        call(files)
    assert isinstance(err.value, NormfreeError)
    assert "\n" not in str(err.value) and needle in str(err.value)
    assert not files["marker"].exists()


def test_diagnose_reports_non_finite_signal():
    """Finite inputs through non-finite weights are a legitimate result: the diagnosis says where."""
    model = _tiny()
    with torch.no_grad():
        model.stages[1][0].branch.conv1.weight.fill_(float("inf"))
    text = diagnose(signal_propagation(model, torch.randn(4, 3, 32, 32)))
    assert "NaN or infinite from block 4 (stages.1.0)" in text


def test_yaml_numbers_written_as_text_are_numbers(tmp_path):
    """YAML 1.1 reads ``1e-3`` as a string; a config file saying lr: 1e-3 means the number."""
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nmin_lr: 1e-5\nepochs: 3.0\n")
    cfg = TrainConfig.from_yaml(tmp_path / "c.yaml")
    assert (cfg.lr, cfg.min_lr, cfg.epochs) == (1e-3, 1e-5, 3) and isinstance(cfg.epochs, int)


def test_resource_check_override(monkeypatch):
    """NORMFREE_SKIP_RESOURCE_CHECK=1 lets a model past the estimate (here: a limit of 1 KiB)."""
    import normfree.resources as res

    monkeypatch.setattr(res, "available_bytes", lambda device="cpu": 1024)
    with pytest.raises(ModelSpecError, match=r"nf_cifar_resnet20 with \{'width': 0.25\} has 1.*e\+0\d parameters"):
        create_model("nf_cifar_resnet20", width=0.25)
    monkeypatch.setenv(res.SKIP_ENV, "1")
    assert create_model("nf_cifar_resnet20", width=0.25) is not None


@pytest.mark.parametrize("module", ["normfree", "normfree.cli"])
def test_python_dash_m_reports_errors_like_the_script(module, tmp_path):
    """``python -m normfree`` and ``python -m normfree.cli`` (torchrun's entry): one line, exit 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", module, "train", "--eval-every", "0", "--out-dir",
                           str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    _assert_one_line_error(proc.stderr, "train", "eval_every (--eval-every) = 0")


def test_genuine_cifar_batches_load_through_the_restricted_unpickler(tmp_path):
    """The official layout as Python 2 and 3 write it (protocol 2, byte-string keys; protocol 4, str keys)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = {}
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images[name] = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        batch = {b"data": images[name], b"labels": [i % 10, 9, 0], b"batch_label": b"batch"} if i % 2 else \
            {"data": images[name], "labels": [i % 10, 9, 0]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2 if i % 2 else 4))
    train, test = load_data(f"cifar10:{tmp_path}", "train"), load_data(f"cifar10:{tmp_path}", "test")
    assert train.x.shape == (15, 32, 32, 3) and test.y.tolist() == [5, 9, 0]
    expected = images["test_batch"].reshape(3, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(test.x.numpy(), expected)
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad / "cifar-10-batches-py")
    (bad / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": images["test_batch"],
                                                                          "labels": [0, 10, 1]}))
    with pytest.raises(DataError, match="test_batch: label 10 is outside \\[0, 10\\)"):
        load_data(f"cifar10:{bad}", "test")


def test_training_batch_far_beyond_memory_fails_before_the_first_step(tmp_path, monkeypatch):
    import normfree.resources as res

    cfg = TrainConfig(model="nf_cifar_resnet20", model_kwargs={"width": 0.25}, data="synthetic", epochs=1,
                      out_dir=str(tmp_path / "run"), train_subset=32, test_subset=16, batch_size=16)
    trainer = Trainer(cfg)
    monkeypatch.setattr(res, "available_bytes", lambda device="cpu": 2**20)  # 1 MiB free
    with pytest.raises(ConfigError, match=r"--batch-size 16 at 16x16 needs about .* but cpu has 0.000977 GiB"):
        trainer.fit()
    assert trainer.step == 0 and not (tmp_path / "run" / "metrics.jsonl").exists()
