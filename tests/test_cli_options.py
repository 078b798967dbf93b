"""Every CLI option reaches what it controls: each test fails if its option is ignored.

The plumbing tests stop the command where it hands its arguments on (monkeypatched, so they are fast);
the behaviour tests check that the values change the result of the real function.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import normfree
from normfree.cli import build_parser, main
from normfree.commands.spp import measure
from normfree.commands.train import config_from_args
from normfree.train.checkpoint import load_checkpoint
from normfree.train.config import TrainConfig
from normfree.train.trainer import Trainer


class Captured(Exception):
    """Raised by a stand-in once it has recorded what the command passed on."""


def _capture(monkeypatch, target: object, name: str) -> dict:
    seen: dict = {}

    def stand_in(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        raise Captured

    monkeypatch.setattr(target, name, stand_in)
    return seen


# ---- train: every TrainConfig field is a flag ---------------------------------------------------------

TRAIN_FLAGS = {  # field: (what the user types, what the config must hold); all differ from the defaults.
    # None: a boolean, typed as --name (True) or --no-name (False)
    "model": ("bn_cifar_resnet20", "bn_cifar_resnet20"), "data": ("synthetic", "synthetic"),
    "out_dir": ("runs/x", "runs/x"), "model_kwargs": ('{"width": 0.5}', {"width": 0.5}),
    "num_classes": ("4", 4), "image_size": ("48", 48), "train_subset": ("64", 64), "test_subset": ("32", 32),
    "epochs": ("3", 3), "batch_size": ("64", 64), "accum_steps": ("2", 2), "lr": ("0.3", 0.3),
    "min_lr": ("0.001", 0.001), "warmup_epochs": ("0.5", 0.5), "momentum": ("0.8", 0.8),
    "nesterov": (None, False), "weight_decay": ("1e-4", 1e-4), "param_groups": ("fixup", "fixup"),
    "skip_gain_lr_scale": ("0.5", 0.5), "gain_lr_scale": ("2", 2.0), "bias_lr_scale": ("3", 3.0),
    "label_smoothing": ("0.1", 0.1), "agc_clip": ("0.02", 0.02), "agc_eps": ("1e-4", 1e-4),
    "ema_decay": ("0.99", 0.99), "augment": (None, False), "mixup": ("0.2", 0.2), "cutmix": ("1.0", 1.0),
    "seed": ("7", 7), "device": ("cpu", "cpu"), "amp": (None, False), "channels_last": (None, False),
    "compile": (None, True), "grad_checkpointing": (None, True), "eval_every": ("2", 2),
    "log_every": ("5", 5), "spp_every": ("10", 10), "eval_batch_size": ("64", 64), "tta_flip": (None, True),
    "divergence": ("warn", "warn"), "divergence_factor": ("8", 8.0), "divergence_patience": ("20", 20),
    "dp": (None, True), "epsilon": ("8", 8.0), "delta": ("1e-6", 1e-6), "max_grad_norm": ("0.5", 0.5),
    "noise_multiplier": ("1.1", 1.1), "accountant": ("prv", "prv"), "augmult": ("2", 2),
    "dp_physical_batch": ("16", 16), "dp_engine": ("opacus", "opacus"), "init": ("default", "default"),
}


def test_every_train_flag_reaches_the_config():
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "recipe"]
    assert sorted(TRAIN_FLAGS) == sorted(f.name for f in fields), "a new TrainConfig field needs a row here"
    default = TrainConfig()
    argv = ["train"]
    for name, (text, want) in TRAIN_FLAGS.items():
        flag = name.replace("_", "-")
        argv += [f"--{flag}", text] if text is not None else [f"--{flag}" if want else f"--no-{flag}"]
    cfg = config_from_args(build_parser().parse_args(argv))
    for name, (_, want) in TRAIN_FLAGS.items():
        assert getattr(default, name) != want, name
        assert getattr(cfg, name) == want and type(getattr(cfg, name)) is type(want), name


def test_train_layers_recipe_config_flags(tmp_path):
    """defaults < --recipe < --config < flags; model_kwargs merge key by key."""
    (tmp_path / "c.yaml").write_text("lr: 0.02\nepochs: 4\nmodel_kwargs: {width: 0.5}\n")
    recipe = config_from_args(build_parser().parse_args(["train", "--recipe", "bn_paper"]))
    assert recipe.recipe == "bn_paper" and recipe.model == "bn_cifar_resnet20" != TrainConfig().model
    cfg = config_from_args(build_parser().parse_args(
        ["train", "--recipe", "bn_paper", "--config", str(tmp_path / "c.yaml"), "--epochs", "5",
         "--model-kwargs", '{"activation": "silu"}']))
    assert cfg.model == "bn_cifar_resnet20" and cfg.recipe == "bn_paper"  # from the recipe
    assert cfg.lr == 0.02 and cfg.epochs == 5  # the file over the recipe, the flag over the file
    assert cfg.model_kwargs == {"width": 0.5, "activation": "silu"}


def test_train_resume_flag_continues_the_checkpoint(tmp_path):
    cfg = TrainConfig(model="nf_cifar_resnet20", data="synthetic", out_dir=str(tmp_path / "run"),
                      model_kwargs={"width": 0.25}, train_subset=32, test_subset=16, epochs=2, batch_size=16)
    Trainer(cfg).fit(until_epoch=1)
    ckpt = tmp_path / "run" / "last.safetensors"
    args = build_parser().parse_args(["train", "--resume", str(ckpt)])
    assert config_from_args(args).to_dict() == cfg.to_dict()  # the checkpoint's recipe, not the defaults
    assert main(["train", "--resume", str(ckpt)]) == 0
    assert load_checkpoint(ckpt)[1]["step"] == 4  # two epochs of two steps: it went on from step 2


BASE = dict(model="nf_cifar_resnet20", data="synthetic", model_kwargs={"width": 0.25, "stochdepth_rate": 0.0},
            train_subset=32, test_subset=16, epochs=1, batch_size=16, lr=0.1, warmup_epochs=0.0,
            eval_batch_size=16)


def _trained(tmp_path: Path, **change) -> dict[str, torch.Tensor]:
    cfg = TrainConfig(**{**BASE, "out_dir": str(tmp_path / "_".join(change) or "base"), **change})
    trainer = Trainer(cfg)
    trainer.fit()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def baseline_weights(tmp_path_factory):
    torch.set_num_threads(1)
    return _trained(tmp_path_factory.mktemp("base"))


@pytest.mark.parametrize("change", [
    {"lr": 0.05}, {"min_lr": 0.05}, {"warmup_epochs": 1.0}, {"momentum": 0.5}, {"nesterov": False},
    {"weight_decay": 0.05}, {"skip_gain_lr_scale": 3.0}, {"gain_lr_scale": 3.0}, {"bias_lr_scale": 3.0},
    {"label_smoothing": 0.3}, {"agc_clip": 0.001}, {"augment": False}, {"mixup": 0.5}, {"cutmix": 1.0},
    {"seed": 1}, {"batch_size": 8}, {"accum_steps": 2, "augment": False, "mixup": 1.0},
], ids=lambda c: "+".join(c))
def test_training_options_change_the_trained_weights(tmp_path, baseline_weights, change):
    """Two steps of SGD: each option, if the trainer honoured it, moves some weight."""
    weights = _trained(tmp_path, **change)
    moved = max(float((weights[k].float() - v.float()).abs().max()) for k, v in baseline_weights.items())
    assert moved > 1e-6


# ---- eval ---------------------------------------------------------------------------------------------

def test_eval_options_reach_evaluate_checkpoint(monkeypatch):
    import normfree.commands.eval as cmd

    seen = _capture(monkeypatch, cmd, "evaluate_checkpoint")
    with pytest.raises(Captured):
        main(["eval", "run/last.safetensors", "--data", "synthetic", "--test-subset", "8", "--device", "cpu",
              "-b", "4", "--image-size", "40"])
    assert seen["args"] == ("run/last.safetensors", "synthetic", 8, "cpu", 4, 40)


def test_eval_data_and_subset_change_what_is_scored(tmp_path, monkeypatch):
    import normfree.commands.eval as cmd

    cfg = TrainConfig(**{**BASE, "out_dir": str(tmp_path / "run"), "epochs": 1})
    Trainer(cfg).fit()
    ckpt = str(tmp_path / "run" / "last.safetensors")
    sizes = []
    import normfree.train.trainer as trainer_mod  # evaluate_checkpoint imports evaluate from here per call

    real_eval = trainer_mod.evaluate

    def counting(net, data, mean, std, dev, batch_size, **kw):
        sizes.append((data.name, len(data), batch_size))
        return real_eval(net, data, mean, std, dev, batch_size, **kw)

    monkeypatch.setattr(trainer_mod, "evaluate", counting)
    cmd.evaluate_checkpoint(ckpt, test_subset=8, batch_size=4)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "test.npz", x=rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), y=np.arange(6) % 4)
    cmd.evaluate_checkpoint(ckpt, data=f"npz:{tmp_path}")
    assert sizes == [("synthetic", 8, 4), (f"npz:{tmp_path}", 6, 256)]  # no EMA weights: raw only


def test_eval_scores_image_folders_at_the_size_the_run_evaluated(tmp_path):
    """A checkpoint trained on an image folder at 24 px records its test size; eval reuses it unless
    --image-size says otherwise (the model's own default would be 32)."""
    from PIL import Image

    import normfree.commands.eval as cmd

    root = tmp_path / "imgs"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((30, 36, 3), 40 * i + (label == "dog") * 20, np.uint8)).save(root / label / f"{i}.png")
    cfg = TrainConfig(**{**BASE, "data": f"imagefolder:{root}", "image_size": 24, "train_subset": 0,
                         "test_subset": 0, "batch_size": 8, "out_dir": str(tmp_path / "run"), "epochs": 1})
    with pytest.warns(UserWarning, match="no val/ folder"):
        Trainer(cfg).fit()
    ckpt = str(tmp_path / "run" / "last.safetensors")
    lines: list[str] = []
    with pytest.warns(UserWarning, match="no val/ folder"):
        cmd.evaluate_checkpoint(ckpt, log=lines.append)
        cmd.evaluate_checkpoint(ckpt, image_size=20, log=lines.append)
    assert "images at 24x24" in lines[0] and "images at 20x20" in lines[1]


# ---- spp ----------------------------------------------------------------------------------------------

def test_spp_options_reach_measure(monkeypatch, tmp_path):
    import normfree.commands.spp as cmd

    seen = _capture(monkeypatch, cmd, "measure")
    with pytest.raises(Captured):
        main(["spp", "nf_cifar_resnet20", "bn_cifar_resnet20", "--out-dir", str(tmp_path), "--image-size", "24",
              "-b", "6", "--skipinit-gain", "1", "--checkpoint", "c.pt", "--data", "npz:d", "--grads",
              "--seed", "3", "--device", "cpu"])
    assert seen["args"] == (["nf_cifar_resnet20", "bn_cifar_resnet20"],)
    assert seen["kwargs"] == dict(batch=6, input_size=24, skipinit_gain=1.0, checkpoint="c.pt", data="npz:d",
                                  gradients=True, seed=3, device="cpu")


SPEC = "nf_cifar_resnet20:width=0.25"


def test_spp_measure_honours_every_argument(tmp_path):
    base = measure([SPEC], batch=4, input_size=16)[0]
    assert base.input_shape == [4, 3, 16, 16] and base.grad_norm is None and base.expected_var is None
    assert measure([SPEC], batch=6, input_size=20)[0].input_shape == [6, 3, 20, 20]
    assert measure([SPEC], batch=4, input_size=16, skipinit_gain=1.0)[0].expected_var is not None  # unit gains
    assert measure([SPEC], batch=4, input_size=16, gradients=True)[0].grad_norm is not None
    assert measure([SPEC], batch=4, input_size=16, seed=1)[0].var != base.var
    torch.manual_seed(5)
    other = normfree.create_model("nf_cifar_resnet20", width=0.25)
    torch.save(other.state_dict(), tmp_path / "w.pt")
    loaded = measure([SPEC], batch=4, input_size=16, checkpoint=str(tmp_path / "w.pt"))[0]
    assert loaded.var != base.var
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "test.npz", x=rng.integers(0, 60, (8, 16, 16, 3), dtype=np.uint8), y=np.zeros(8, dtype=int))
    images = measure([SPEC], batch=4, input_size=16, data=f"npz:{tmp_path}")[0]
    assert images.input_shape == [4, 3, 16, 16] and images.var != base.var


def test_spp_checkpoint_rebuilds_the_model_with_its_trained_options(tmp_path):
    """A training checkpoint records its model options (width 0.25, 4 classes here): the SPP of it
    measures that model with those weights, without the options being given again."""
    Trainer(TrainConfig(**{**BASE, "out_dir": str(tmp_path / "run")})).fit()
    ckpt = str(tmp_path / "run" / "last.safetensors")
    got = measure(["nf_cifar_resnet20"], batch=4, input_size=16, checkpoint=ckpt)[0]
    want = measure(["nf_cifar_resnet20:width=0.25,num_classes=4,stochdepth_rate=0.0"], batch=4, input_size=16,
                   checkpoint=ckpt)[0]
    assert got.var == want.var and got.input_shape == [4, 3, 16, 16]


# ---- bench --------------------------------------------------------------------------------------------

def _bench(monkeypatch, *argv: str) -> dict:
    import normfree.commands.bench as cmd

    seen = _capture(monkeypatch, cmd, "run_benchmark")
    with pytest.raises(Captured):
        main(["bench", *argv])
    models, cfg = seen["args"]
    return {"models": models, "cfg": cfg}


def test_bench_options_reach_the_benchmark(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        got = _bench(monkeypatch, "nf_cifar_resnet20", "--infer", "-b", "3", "--image-size", "20", "--device", "cpu",
                     "--compile", "eager", "--channels-last", "--amp", "--warmup", "4", "--repeats", "2",
                     "--steps", "5", "--threads", "2", "--num-classes", "6")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    cfg = got["cfg"]
    assert (cfg.mode, cfg.batch, cfg.size, cfg.device, cfg.compile) == ("infer", 3, 20, "cpu", "eager")
    assert (cfg.channels_last, cfg.amp, cfg.warmup, cfg.repeats, cfg.steps) == (True, True, 4, 2, 5)
    assert set(got["models"]) == {"nf_cifar_resnet20", "bn_cifar_resnet20"}  # the BN twin is the baseline
    assert all(m.fc.out_features == 6 for m in got["models"].values())
    defaults = _bench(monkeypatch, "nf_cifar_resnet20", "--no-baseline", "--no-channels-last", "--no-amp")
    assert set(defaults["models"]) == {"nf_cifar_resnet20"}
    assert defaults["cfg"].mode == "train" and defaults["cfg"].compile is None
    assert (defaults["cfg"].channels_last, defaults["cfg"].amp) == (False, False)
    assert defaults["models"]["nf_cifar_resnet20"].fc.out_features == 10


def test_bench_data_sets_the_input_shape_and_classes(monkeypatch):
    got = _bench(monkeypatch, "nf_cifar_resnet20", "--data", "demo", "--no-baseline")  # gray 8x8 digits, 10 classes
    cfg, model = got["cfg"], got["models"]["nf_cifar_resnet20"]
    assert (cfg.size, cfg.in_chans) == (8, 1)
    assert model.fc.out_features == 10 and next(model.parameters()).shape[1] == 1
    synthetic = _bench(monkeypatch, "nf_cifar_resnet20", "--data", "synthetic", "--image-size", "12", "--no-baseline")
    assert (synthetic["cfg"].size, synthetic["cfg"].in_chans) == (12, 3)  # the flag wins over the data's 16 px
    assert synthetic["models"]["nf_cifar_resnet20"].fc.out_features == 4


def test_bench_model_transforming_options(monkeypatch):
    ckpt = _bench(monkeypatch, "nf_cifar_resnet20", "--grad-checkpointing", "--no-baseline")
    assert ckpt["models"]["nf_cifar_resnet20"].grad_checkpointing
    assert not _bench(monkeypatch, "nf_cifar_resnet20", "--no-baseline")["models"]["nf_cifar_resnet20"].grad_checkpointing
    dep = _bench(monkeypatch, "nf_cifar_resnet20:width=0.25", "--infer", "--deploy")["models"]
    assert set(dep) == {"nf_cifar_resnet20:width=0.25", "bn_cifar_resnet20:width=0.25"}
    assert all(not any(p.requires_grad for p in m.parameters()) for m in dep.values())  # deployed copies
    narrow = normfree.create_model("bn_cifar_resnet20", width=0.25).fc.in_features
    wide = normfree.create_model("bn_cifar_resnet20").fc.in_features
    assert dep["bn_cifar_resnet20:width=0.25"].fc.in_features == narrow < wide  # the twin's options too


def test_bench_json_records_the_run(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert main(["bench", "nf_cifar_resnet20:width=0.25", "--no-baseline", "--batch-size", "2", "--image-size", "16",
                 "--warmup", "0", "--repeats", "1", "--steps", "1", "--json", str(path)]) == 0
    record = json.loads(path.read_text())
    assert record["config"]["batch"] == 2 and record["config"]["size"] == 16
    assert [r["name"] for r in record["results"]] == ["nf_cifar_resnet20:width=0.25"]


# ---- compare ------------------------------------------------------------------------------------------

def test_compare_options_reach_compare(monkeypatch, capsys):
    import normfree.train.compare as mod

    seen = _capture(monkeypatch, mod, "compare")
    with pytest.raises(Captured):
        main(["compare", "nf_cifar_resnet20", "bn_cifar_resnet20", "--data", "synthetic", "--out-dir", "o",
              "-b", "16", "4", "--epochs", "3", "--lr", "0.2", "--lr-batch", "64", "--train-subset", "100",
              "--test-subset", "50", "--weight-decay", "1e-3", "--warmup-epochs", "0.5", "--eval-batch-size", "32",
              "--spp-batch-size", "8", "--spp-skipinit-gain", "1", "--seed", "2", "5", "--device", "cpu"])
    assert seen["args"] == (["nf_cifar_resnet20", "bn_cifar_resnet20"], "synthetic", "o")
    assert seen["kwargs"] == dict(batch_sizes=[16, 4], epochs=3, lr=0.2, lr_batch=64, train_subset=100,
                                  test_subset=50, spp_batch=8, spp_skipinit_gain=1.0, seed=[2, 5], device="cpu",
                                  weight_decay=1e-3, warmup_epochs=0.5, eval_batch_size=32)


# ---- convert ------------------------------------------------------------------------------------------

def test_convert_options_reach_the_converters(monkeypatch, tmp_path):
    import normfree.convert as conv
    import normfree.convert.deepmind as dm

    monkeypatch.setattr(dm, "read_params", lambda path, allow_pickle: {"linear/w": np.zeros((4, 9)),
                                                                       "allowed": allow_pickle})
    seen = _capture(monkeypatch, conv, "from_deepmind")
    (tmp_path / "p.npz").write_bytes(b"")
    argv = ["convert", "--from", "deepmind", str(tmp_path / "p.npz"), "--model", "nfnet_f0", "--out", "o.st"]
    with pytest.raises(Captured):
        main([*argv, "--num-classes", "7", "--allow-pickle"])
    assert seen["args"][0] == "nfnet_f0" and seen["args"][1]["net/allowed"] is True
    assert seen["kwargs"] == {"num_classes": 7}
    with pytest.raises(Captured):
        main(argv)
    assert seen["kwargs"] == {"num_classes": 9} and seen["args"][1]["net/allowed"] is False  # the source's head


def test_dp_noise_knob_on_the_command_line_replaces_the_recipes_other_one(tmp_path):
    """A DP recipe calibrates σ to its ε; ``--noise-multiplier`` on the command line fixes σ instead (and
    ``--epsilon`` replaces a config's fixed σ), rather than failing with "not both"."""
    from normfree.errors import ConfigError
    from normfree.train.dp import check_config

    def cfg(*argv):
        return config_from_args(build_parser().parse_args(["train", *argv]))

    recipe = cfg("--recipe", "dp_cifar10_cpu")
    assert (recipe.epsilon, recipe.noise_multiplier) == (8.0, 0.0)
    fixed = cfg("--recipe", "dp_cifar10_cpu", "--noise-multiplier", "0.8")
    assert (fixed.epsilon, fixed.noise_multiplier) == (0.0, 0.8)
    check_config(fixed)
    (tmp_path / "c.yaml").write_text("dp: true\nepsilon: 0.0\nnoise_multiplier: 1.1\n")
    calibrated = cfg("--config", str(tmp_path / "c.yaml"), "--epsilon", "3")
    assert (calibrated.epsilon, calibrated.noise_multiplier) == (3.0, 0.0)
    both = cfg("--recipe", "dp_cifar10_cpu", "--epsilon", "3", "--noise-multiplier", "0.8")
    with pytest.raises(ConfigError, match="not both"):  # naming both is still a contradiction
        check_config(both)
