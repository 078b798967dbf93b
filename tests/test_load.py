"""``normfree.load`` / ``data_config`` / ``create_transform``: a checkpoint becomes the model and its eval
preprocessing in two lines, and gives the same logits as the evaluation ``normfree eval`` runs."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import normfree
from normfree.cli import main
from normfree.errors import CheckpointError
from normfree.train.checkpoint import load_checkpoint, split_prefix
from normfree.train.config import TrainConfig
from normfree.train.data import load_data, step_generator, to_input
from normfree.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="nf_cifar_resnet20", model_kwargs={"width": 0.25}, train_subset=64, test_subset=32, epochs=1,
            batch_size=32, eval_batch_size=32, warmup_epochs=0.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("load") / "run"
    Trainer(TrainConfig(data="synthetic", out_dir=str(out), ema_decay=0.9, **TINY)).fit()
    return out / "last.safetensors"


def test_load_rebuilds_the_trained_model(run):
    model = normfree.load(run)
    assert not model.training and model.fc.out_features == 4  # synthetic has 4 classes, not the default 10
    tensors, meta = load_checkpoint(run)
    ema, raw = split_prefix(tensors, "ema"), split_prefix(tensors, "model")
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())  # EMA weights by default
    plain = normfree.load(run, ema=False)
    assert all(torch.equal(v, raw[k]) for k, v in plain.state_dict().items())
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)  # so the two checks differ
    cfg = normfree.data_config(model)
    assert cfg["input_size"] == (3, 16, 16) and cfg["crop_pct"] == 1.0  # trained at the data's own size
    assert cfg["mean"] == pytest.approx(meta["mean"]) and cfg["std"] == pytest.approx(meta["std"])


def test_transform_and_model_give_the_evaluated_logits(run):
    """The two-line path equals the trainer's evaluation: data batch → to_input with the run's mean/std."""
    model = normfree.load(run, ema=False)
    transform = normfree.create_transform(normfree.data_config(model))
    test = load_data("synthetic", "test", 8, 16)
    x, _ = test.batch(torch.arange(8), False, step_generator(0))
    meta = load_checkpoint(run)[1]
    mean, std = (torch.tensor(meta[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        want = model(to_input(x, mean, std, False))
        got = model(torch.stack([transform(img.numpy()) for img in x]))  # H×W×C uint8 arrays, as a user has
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_transform_matches_the_image_folder_pipeline(tmp_path):
    """Resize short side to size/crop_pct, centre crop, normalize: as FolderData evaluates (Pillow bicubic),
    to within the rounding of Pillow's uint8 output and its slightly different bicubic filter."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in ("cat", "dog"):
        (root / "val" / c).mkdir(parents=True)
        # smooth images (a blurred random field): interpolation filters differ only in the fine detail
        field = rng.random((2, 12, 16, 3))
        for i in range(2):
            img = np.asarray(Image.fromarray((field[i] * 255).astype(np.uint8)).resize((64, 48), Image.BICUBIC))
            Image.fromarray(img).save(root / "val" / c / f"{i}.png")
    model = normfree.create_model("nf_cifar_resnet20", width=0.25)
    model.pretrained_cfg.update(test_input_size=(3, 32, 32), crop_pct=0.875, interpolation="bicubic",
                                crop_mode="center")
    transform = normfree.create_transform(normfree.data_config(model))
    folder = load_data(f"imagefolder:{tmp_path / 'imgs'}", "test", 0, 32)
    for i, path in enumerate(folder.files):
        ref = torch.from_numpy(folder._load(i, False, step_generator(0))).permute(2, 0, 1).float() / 255
        ours = transform(Image.open(path)) * transform.std + transform.mean
        assert ours.shape == ref.shape == (3, 32, 32)
        assert float((ours - ref).abs().mean()) < 2 / 255 and float((ours - ref).abs().max()) < 12 / 255


def test_transform_resizes_crops_and_matches_channels():
    cfg = {"input_size": (1, 8, 8), "interpolation": "bilinear", "mean": (0.5,), "std": (0.25,),
           "crop_pct": 1.0, "crop_mode": "center"}
    t = normfree.create_transform(cfg)
    rgb = np.full((16, 32, 3), 255, dtype=np.uint8)
    rgb[:, :4] = 0  # a black band on the left, cropped away by the centre crop
    out = t(rgb)
    assert out.shape == (1, 8, 8) and torch.allclose(out, torch.full((1, 8, 8), (1 - 0.5) / 0.25))
    squash = normfree.create_transform({**cfg, "crop_mode": "squash"})(rgb)  # whole width: the band shows
    assert squash.shape == (1, 8, 8) and float(squash[0, :, 0].mean()) < 0


def test_load_refuses_a_file_that_names_no_model(tmp_path):
    from safetensors.torch import save_file

    save_file(normfree.create_model("nf_cifar_resnet20", width=0.25).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="names no model"):
        normfree.load(tmp_path / "w.safetensors")


def test_a_converted_checkpoint_loads_with_the_source_class_count(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(ROOT / "tests"), *sys.path])
    from test_convert_deepmind import _to_haiku

    src = normfree.create_model("nf_cifar_resnet20", num_classes=7)
    np.savez(tmp_path / "p.npz", **_to_haiku(src))
    out = tmp_path / "m.safetensors"
    assert main(["convert", "--from", "deepmind", str(tmp_path / "p.npz"), "--model", "nf_cifar_resnet20",
                 "--out", str(out)]) == 0  # no --num-classes: 7 from the source's classifier
    assert "7 classes from the source's classifier" in capsys.readouterr().out
    model = normfree.load(out)
    assert model.fc.out_features == 7
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.state_dict().items())


def test_eval_says_what_it_scored(run, capsys):
    assert main(["eval", str(run), "--test-subset", "12", "-b", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"eval {re.escape(str(run))}: nf_cifar_resnet20 \(4 classes\) on synthetic \(from the "
                        r"checkpoint\), test split: 12 images at 16x16, mean \(.*\) std \(.*\), batch 5, device cpu",
                        out[0]), out[0]
    assert out[1].startswith(" raw: top-1") and out[2].startswith(" ema: top-1")


def test_spp_takes_classes_and_size_from_the_checkpoint(run, tmp_path):
    from normfree.analysis.spp import load_json

    assert main(["spp", "nf_cifar_resnet20", "--checkpoint", str(run), "-b", "4", "--data", "synthetic",
                 "--out-dir", str(tmp_path)]) == 0
    assert load_json(tmp_path / "spp.json")[0].input_shape == [4, 3, 16, 16]


def test_documented_two_line_example(tmp_path, monkeypatch, capsys):
    """docs/training.md's example, run as written on a checkpoint of the quick start's kind."""
    from PIL import Image

    text = (ROOT / "docs/training.md").read_text()
    [code] = [c for c in re.findall(r"^```python fragment\n(.*?)^```", text, re.S | re.M) if "normfree.load(" in c]
    monkeypatch.chdir(tmp_path)
    Trainer(TrainConfig(data="demo", out_dir="runs/digits", **TINY)).fit()
    digits = load_data("demo", "test", 1, 8)
    Image.fromarray(digits.x[0, ..., 0].numpy()).save("digit.png")
    capsys.readouterr()
    exec(compile(code, "docs/training.md", "exec"), {"__name__": "__doc_example__"})
    printed = int(capsys.readouterr().out.split()[-1])
    model = normfree.load("runs/digits/last.safetensors")
    meta = load_checkpoint("runs/digits/last.safetensors")[1]
    x = to_input(digits.x[:1], *(torch.tensor(meta[k]).view(1, -1, 1, 1) for k in ("mean", "std")), False)
    with torch.no_grad():
        assert printed == int(model(x).argmax())
