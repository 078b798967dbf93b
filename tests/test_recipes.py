"""Named recipes, the levers they set (per-role lr, flip TTA), and the CIFAR-10 lane runner/summarizer."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import normfree
from normfree.cli import build_parser, main
from normfree.commands.train import config_from_args
from normfree.train import Trainer, TrainConfig, evaluate
from normfree.train.data import ArrayData
from normfree.train.optim import build_param_groups, param_role
from normfree.train.recipes import layer_values, list_recipes, load_recipe

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "cifar10_nf_vs_bn"


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_shipped_recipes_are_valid_configs():
    names = list_recipes()
    assert {"nf_paper", "bn_paper", "nf_cifar", "bn_cifar"} <= set(names)
    for name in names:
        cfg = TrainConfig.from_dict(load_recipe(name))
        assert cfg.recipe == name
        normfree.create_model(cfg.model, **cfg.model_kwargs)  # the model options exist


def test_paper_recipe_is_the_official_default():
    """nf_paper is TrainConfig's documented default recipe with the official model: nothing tuned."""
    paper = TrainConfig.from_dict(load_recipe("nf_paper")).to_dict()
    default = TrainConfig(recipe="nf_paper").to_dict()
    assert paper == default
    model = normfree.create_model("nf_cifar_resnet20")
    assert all(float(b.skip_gain.detach()) == 0.0 for b in model.modules() if getattr(b, "skip_gain", None) is not None)


def test_flags_override_recipe_and_model_kwargs_merge():
    cfg = config_from_args(_args(["--recipe", "nf_cifar", "--lr", "0.3", "--model-kwargs", '{"alpha": 0.3}']))
    recipe = load_recipe("nf_cifar")
    assert cfg.lr == 0.3
    assert cfg.model_kwargs == {**recipe["model_kwargs"], "alpha": 0.3}
    assert cfg.recipe == "nf_cifar"
    bn = config_from_args(_args(["--recipe", "bn_cifar", "--ema-decay", "0.99"]))
    assert bn.lr == load_recipe("bn_cifar")["lr"] != TrainConfig().lr and bn.ema_decay == 0.99


def test_config_file_sits_between_recipe_and_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"lr": 0.05, "ema_decay": 0.0, "model_kwargs": {"stochdepth_rate": 0.2}}))
    cfg = config_from_args(_args(["--recipe", "nf_cifar", "--config", str(path), "--ema-decay", "0.99"]))
    assert (cfg.lr, cfg.ema_decay) == (0.05, 0.99)
    assert cfg.model_kwargs == {"skipinit_gain": 1.0, "stochdepth_rate": 0.2}


def test_layer_values_merges_only_model_kwargs():
    out = layer_values({"model_kwargs": {"a": 1}, "lr": 1}, {"model_kwargs": {"b": 2}, "lr": 2})
    assert out == {"model_kwargs": {"a": 1, "b": 2}, "lr": 2}


def test_unknown_recipe_is_one_line_listing_known(capsys):
    assert main(["train", "--recipe", "nf_cifr", "--data", "demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nf_cifr" in err and "nf_cifar" in err and "bn_paper" in err


def test_recipes_command_and_train_recipe_list_print_values(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert main(["train", "--recipe", "list"]) == 0
    assert capsys.readouterr().out == out
    for name in list_recipes():
        assert f"{name}: " in out
    assert "label_smoothing: 0.1" in out and "skipinit_gain" in out
    assert main(["recipes", "--names"]) == 0
    assert capsys.readouterr().out.split() == list_recipes()


def test_param_roles():
    model = normfree.create_model("nf_cifar_resnet20", width=0.5, use_se=True)
    roles = {n: param_role(n, p) for n, p in model.named_parameters()}
    assert roles["stages.0.0.skip_gain"] == "skip_gain"
    assert roles["stem.conv.gain"] == "gain" and roles["stem.conv.bias"] == "bias"
    assert roles["stem.conv.weight"] == "weight" and roles["fc.weight"] == "weight"
    bn = normfree.create_model("bn_cifar_resnet20", width=0.5)
    norm_weights = [(f"{mn}.weight", m.weight) for mn, m in bn.named_modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norm_weights and {param_role(n, p) for n, p in norm_weights} == {"gain"}


def test_role_lr_scales_multiply_each_params_lr():
    model = normfree.create_model("nf_cifar_resnet20", width=0.5)
    scales = {"skip_gain": 10.0, "gain": 2.0, "bias": 0.5}
    groups = build_param_groups(model, "default", 0.1, 5e-4, scales)
    base = {id(p): g["lr_scale"] for g in build_param_groups(model, "default", 0.1, 5e-4) for p in g["params"]}
    seen = {}
    for g in groups:
        for p in g["params"]:
            seen[id(p)] = g["lr_scale"]
    names = dict(model.named_parameters())
    assert len(seen) == len(names)  # every parameter exactly once
    for n, p in names.items():
        leaf = n.rsplit(".", 1)[-1]
        want = 10.0 if leaf == "skip_gain" else 2.0 if leaf == "gain" else 0.5 if leaf == "bias" else 1.0
        assert seen[id(p)] == pytest.approx(base[id(p)] * want), n


def test_skip_gain_lr_scale_reaches_the_optimizer(tmp_path):
    """With the skip gains' lr multiplier at 0 they stay at their initial value while training moves the rest."""
    cfg = TrainConfig(model="nf_cifar_resnet20", model_kwargs={"width": 0.25, "skipinit_gain": 0.5},
                      data="demo", epochs=1, batch_size=64, train_subset=256, test_subset=64, eval_every=1,
                      skip_gain_lr_scale=0.0, out_dir=str(tmp_path), device="cpu")
    trainer = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    for n, p in trainer.model.named_parameters():
        if n.endswith("skip_gain"):
            assert torch.equal(p, before[n]), n
    assert not torch.equal(trainer.model.fc.weight, before["fc.weight"])


def test_flip_tta_matches_manual_mirror_average():
    torch.manual_seed(0)
    model = normfree.create_model("nf_cifar_resnet20", width=0.25, skipinit_gain=1.0, num_classes=4).eval()
    x = torch.randint(0, 256, (40, 8, 8, 3), dtype=torch.uint8)
    y = torch.randint(0, 4, (40,))
    data = ArrayData(x, y, 4, "t")
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    out = evaluate(model, data, mean, std, torch.device("cpu"), batch_size=16, flip=True)
    inp = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        plain, mirror = model(inp), model(inp.flip(3))
    assert out["top1"] == pytest.approx(100 * (plain.argmax(1) == y).float().mean().item())
    assert out["top1_flip"] == pytest.approx(100 * ((plain + mirror).argmax(1) == y).float().mean().item())
    assert not torch.equal(plain.argmax(1), (plain + mirror).argmax(1))  # the mirror changes some predictions
    assert "top1_flip" not in evaluate(model, data, mean, std, torch.device("cpu"), batch_size=16)


def test_wall_time_accumulates_over_resume(tmp_path):
    kw = dict(model="nf_cifar_resnet20", model_kwargs={"width": 0.25}, data="demo", batch_size=64,
              train_subset=128, test_subset=32, out_dir=str(tmp_path), device="cpu")
    first = Trainer(TrainConfig(epochs=1, **kw)).fit()
    second = Trainer(TrainConfig(epochs=2, **kw), resume=tmp_path / "last.safetensors").fit()
    assert second["total_wall_time_s"] == pytest.approx(first["wall_time_s"] + second["wall_time_s"], rel=0.2)
    assert second["train_images"] == 128 and second["test_images"] == 32


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lane_plan_order_and_stale_locks(tmp_path):
    lanes = _module("lanes")
    plan = {"common": {"tta_flip": True}, "stages": [
        {"name": "a", "table": "t", "common": {"epochs": 2},
         "runs": [{"name": "x", "recipe": "nf_paper", "seeds": [0, 1]},
                  {"name": "y", "recipe": "bn_paper", "seeds": [0, 1, 2], "set": {"lr": 0.2}}]}]}
    runs = list(lanes.expand(plan, exp=tmp_path))
    assert [(r["name"], r["seed"]) for r in runs] == [("x", 0), ("y", 0), ("x", 1), ("y", 1), ("y", 2)]
    assert runs[4]["dir"] == tmp_path / "t" / "y_s2"
    assert runs[1]["values"] == {"tta_flip": True, "epochs": 2, "lr": 0.2, "seed": 0}
    assert lanes.flags({"model_kwargs": {"a": 1}, "tta_flip": True, "amp": False, "lr": 0.2}) == [
        "--model-kwargs", '{"a": 1}', "--tta-flip", "--no-amp", "--lr", "0.2"]
    d = tmp_path / "run"
    assert lanes.claim(d) and not lanes.claim(d)  # held by this (live) process
    (d / ".lane.lock").write_text("999999999")  # a dead lane's lock
    assert lanes.claim(d)


def test_lane_loop_marks_failures_and_stops_when_interrupted(tmp_path):
    lanes = _module("lanes")
    runs = [{"table": "t", "dir": tmp_path / name, "rc": rc}
            for name, rc in (("ok", 0), ("bad", 3), ("cut", 130), ("later", 0))]
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / ".lane.lock").write_text(str(os.getpid()))  # a live lane holds this one
    runs.insert(1, {"table": "t", "dir": tmp_path / "held", "rc": 0})
    ran, after = [], []

    def command_of(run):
        ran.append(run["dir"].name)
        return [sys.executable, "-c", f"print('step'); raise SystemExit({run['rc']})"]

    def state_of(run):
        return "done" if (run["dir"] / "done").exists() else "todo"

    assert lanes.run_plan(runs, command_of, state_of, after=lambda r: after.append(r["dir"].name)) == 130
    assert ran == ["ok", "bad", "cut"] and after == ["ok"]  # held skipped, "later" left for the next lane
    assert (tmp_path / "bad" / "failed").read_text() == "3\n" and not (tmp_path / "cut" / "failed").exists()
    assert (tmp_path / "ok" / "stdout.log").read_text() == "step\n"
    assert not (tmp_path / "cut" / ".lane.lock").exists() and (tmp_path / "held" / ".lane.lock").exists()


def test_lane_logs_name_no_machine_folders(tmp_path):
    lanes = _module("lanes")
    snap = tmp_path / "snap"
    code = f"print({str(snap / 'normfree' / 'x.py')!r} + ':1: UserWarning'); print({os.getcwd()!r} + '/a/b')"
    env = {**os.environ, "PYTHONPATH": str(snap)}
    assert lanes.run_logged([sys.executable, "-c", code], tmp_path / "log", env) == 0
    assert (tmp_path / "log").read_text() == "normfree/x.py:1: UserWarning\na/b\n"


def test_lanes_reread_the_plan_and_respect_holds(tmp_path):
    lanes = _module("lanes")
    plan = {"stages": [{"name": "b", "table": "t", "hold": True,
                        "runs": [{"name": "y", "recipe": "nf_paper", "seeds": [0]}]},
                       {"name": "a", "table": "t", "runs": [{"name": "x", "recipe": "nf_paper", "seeds": [0]}]}]}
    listed = [(r["name"], lanes.state(r)) for r in lanes.expand(plan, exp=tmp_path)]
    assert listed == [("y", "held"), ("x", "todo")]
    assert [r["hold"] for r in lanes.expand(plan, stage="b", exp=tmp_path)] == [False]  # named: runs
    ran = []

    def runs():  # the plan as the lane reads it before each claim; the first run releases the hold
        if ran:
            plan["stages"][0]["hold"] = False
        return list(lanes.expand(plan, exp=tmp_path))

    def command_of(run):
        ran.append(run["name"])
        (run["dir"] / "done").touch()
        return [sys.executable, "-c", "pass"]

    state_of = lambda r: "done" if (r["dir"] / "done").exists() else "todo"  # noqa: E731
    assert lanes.run_plan(runs, command_of, state_of) == 0
    assert ran == ["x", "y"]  # the held stage waited although it comes first, and ran once released


def test_lanes_near_a_deadline_take_the_runs_that_fit(tmp_path, monkeypatch):
    lanes = _module("lanes")
    plan = {"stages": [{"name": "long", "table": "b4", "minutes": 90,
                        "runs": [{"name": "x", "recipe": "nf_cifar", "seeds": [0, 1]}]},
                       {"name": "short", "table": "b128",
                        "runs": [{"name": "y", "recipe": "nf_cifar", "seeds": [0, 1, 2]}]}]}
    runs = list(lanes.expand(plan, exp=tmp_path))
    done = runs[2]["dir"]  # b128/y_s0 finished in 20 minutes; b128's other runs are expected to take as long
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"epochs_done": 1, "total_wall_time_s": 1200.0}))
    (done / "config.yaml").write_text("epochs: 1\n")
    assert lanes.expected_seconds(runs[3], runs) == 1200.0
    assert lanes.expected_seconds(runs[0], runs) == 90 * 60  # no b4 run finished: the stage's estimate
    now = time.time()
    clock = [now]
    monkeypatch.setattr(lanes.time, "time", lambda: clock[0])
    assert lanes.fits(runs[0], runs, now + 100 * 60) and not lanes.fits(runs[0], runs, now + 95 * 60)  # 10 % margin
    assert lanes.fits(runs[0], runs, None)
    ran = []

    def command_of(run):  # each run takes 20 minutes of the lane's clock
        ran.append(run["dir"].name)
        clock[0] += 20 * 60
        return [sys.executable, "-c", "pass"]

    state_of = lambda r: "done" if r["dir"] in (done,) or r["dir"].name in ran else "todo"  # noqa: E731
    assert lanes.run_plan(runs, command_of, state_of, deadline=now + 30 * 60) == 0
    assert ran == ["y_s1"]  # the 90-minute runs were skipped, and after y_s1 (20 min) nothing else fits
    ran.clear()
    assert lanes.run_plan(runs, command_of, state_of, deadline=now + 30 * 60) == 0 and ran == []
    assert lanes.parse_until("00:00") > now and lanes.parse_until("23:59") - now < 86400
    assert lanes.parse_until(None) is None


def test_summarizer_rows_from_a_real_run(tmp_path):
    summarize = _module("summarize")
    run = tmp_path / "headline_b64" / "nf_x_s3"
    cfg = TrainConfig.from_dict(load_recipe("nf_cifar"))
    cfg = dataclasses.replace(cfg, data="demo", epochs=2, batch_size=64, train_subset=192, test_subset=64,
                              seed=3, lr=0.2, ema_decay=0.9, tta_flip=False, out_dir=str(run), device="cpu",
                              model_kwargs={**cfg.model_kwargs, "width": 0.25})
    Trainer(cfg).fit()
    rows = summarize.collect(tmp_path)
    assert len(rows) == 1
    r = rows[0]
    summary = json.loads((run / "summary.json").read_text())
    assert r["recipe"] == "nf_cifar+width=0.25+lr=0.2+ema_decay=0.9"
    assert (r["net"], r["batch"], r["epochs"], r["seed"], r["train_images"], r["test_images"]) == (
        "nf", 64, 2, 3, 192, 64)
    assert r["top1"] == summary["ema_test_top1"] and r["top1_flip"] is None  # EMA weights are the kept ones
    assert [e for e, _ in r["curve"]] == [1, 2]
    summarize.write_csv(rows, tmp_path / "r.csv")
    header, line = (tmp_path / "r.csv").read_text().splitlines()
    assert header == ",".join(summarize.COLUMNS) and ",nf_cifar+width=0.25+lr=0.2+ema_decay=0.9,64,2,3,192,64," in line
    summarize.figure(rows, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert os.path.getsize(tmp_path / "r.csv") > 0


def test_summarizer_lists_a_diverged_run_with_its_error(tmp_path, capsys):
    """A run the lane marked failed (its ``normfree train`` exit status in ``failed``) stays out of
    results.csv but is listed with the error its log ends on."""
    summarize = _module("summarize")
    run = tmp_path / "sweep_b4" / "nf_lr1e6_s1"
    rc = main(["train", "--model", "nf_cifar_resnet20", "--model-kwargs", '{"width": 0.25}', "--data", "demo",
               "--lr", "1e6", "--epochs", "1", "-b", "32", "--train-subset", "128", "--test-subset", "32",
               "--out-dir", str(run), "--device", "cpu"])
    assert rc != 0
    (run / "stdout.log").write_text(capsys.readouterr().err)
    (run / "failed").write_text(f"{rc}\n")
    assert summarize.collect(tmp_path) == []
    [r] = summarize.stopped(tmp_path)
    assert (r["table"], r["cell"], r["seed"]) == ("sweep_b4", "nf_lr1e6", 1)
    assert re.fullmatch(r"the training loss became nan at step \d+ \(epoch 0\)", r["reason"]), r["reason"]
    assert "| sweep_b4 | nf_lr1e6 | 1 | the training loss became nan" in summarize.stopped_table([r])


def _row(table, cell, seed, top1):
    return {"table": table, "cell": cell, "net": cell.split("_")[0], "seed": seed, "top1": top1,
            "recipe": f"{cell.split('_')[0]}_cifar"}


def test_headline_means_targets_and_the_sweep_choice():
    summarize = _module("summarize")
    rows = [_row("headline_b128_e10", "nf", s, v) for s, v in ((0, 83.0), (1, 82.0), (2, 82.5))]
    rows += [_row("headline_b128_e10", "bn", s, v) for s, v in ((0, 83.0), (1, 82.6), (2, 83.3))]  # NF − BN = −0.47
    rows += [_row("headline_b128_e30", "nf", 0, 90.0), _row("headline_b128_e30", "bn", 0, 89.8)]
    # batch 4: NF's best lr by seed 0 is lr1 (its seed 1 is low, but must not change the choice), BN's lr3
    rows += [_row("sweep_b4_e10", "nf_lr1", 0, 80.0), _row("sweep_b4_e10", "nf_lr1", 1, 78.0),
             _row("sweep_b4_e10", "nf_lr2", 0, 79.5), _row("sweep_b4_e10", "bn_lr2", 0, 70.0),
             _row("sweep_b4_e10", "bn_lr3", 0, 75.0), _row("sweep_b4_e10", "bn_lr3", 1, 75.0)]
    lines = summarize.headline(rows).splitlines()[2:]
    cols = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cols[0][1].startswith("**82.50** (83.00, 82.00, 82.50)") and cols[0][3:] == ["-0.47", "≥ -0.3", "missed"]
    assert cols[1][3:] == ["+0.20", "≥ -0.3", "met, 1 of 2 seeds"]
    assert cols[2][1].startswith("**79.00**") and cols[2][2].startswith("**75.00**")
    assert cols[2][3:] == ["+4.00", "≥ +3.0", "met"]
    assert cols[3][1:4] == ["pending", "pending", "–"] and cols[3][5] == "pending"


def test_readme_headline_is_the_one_the_committed_logs_give():
    """The README's CIFAR-10 numbers are regenerated from the committed runs, never typed in."""
    summarize = _module("summarize")
    text = summarize.README.read_text()
    start, end = (text.index(m) for m in summarize.HEADLINE)
    assert text[start + len(summarize.HEADLINE[0]):end].strip() == summarize.headline(summarize.collect())


@pytest.mark.parametrize("bench", ["cifar10_nf_vs_bn", "dp_cifar10", "baselines_cifar10"])
def test_committed_plans_build_every_run(bench):
    """Every run a committed ``normfree train`` plan lists is a valid config whose model builds: a typo in
    a plan would otherwise surface as a failed run hours into a lane."""
    from normfree.train.dp import check_config

    lanes = _module("lanes")
    root = BENCH.parent / bench
    runs = list(lanes.expand(yaml.safe_load((root / "plan.yaml").read_text()), exp=root / "exp"))
    assert runs
    models = set()
    for run in runs:  # the config the lane's command line gives, checked as the trainer checks it
        cfg = config_from_args(build_parser().parse_args(["train", "--recipe", run["recipe"],
                                                          *lanes.flags(run["values"])]))
        if cfg.dp:
            check_config(cfg)
        models.add((cfg.model, json.dumps(cfg.model_kwargs, sort_keys=True)))
    for name, kwargs in sorted(models):
        with torch.device("meta"):
            normfree.create_model(name, **json.loads(kwargs))
