"""One CLI vocabulary: every subcommand spells a concept the same way, old spellings still work (and say
they are deprecated), booleans are --flag/--no-flag, and the model table, --version and pipes behave."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pytest

from normfree.cli import build_parser, main
from normfree.commands import models as models_cmd
from normfree.commands.options import CANONICAL
from normfree.registry import list_models


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _visible(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and a.help != argparse.SUPPRESS]


def _hidden(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and a.help == argparse.SUPPRESS]


def test_no_concept_is_spelled_two_ways():
    shown: dict[str, dict[str, str]] = {}  # flag → {subcommand: dest}
    for name, p in _subparsers().items():
        for action in _visible(p):
            for flag in action.option_strings:
                shown.setdefault(flag, {})[name] = action.dest
    for concept, (canonical, others) in CANONICAL.items():
        wrong = {flag: sorted(shown[flag]) for flag in others if flag in shown}
        assert not wrong, f"{concept} is {canonical}, but {wrong} spell it otherwise"
        assert len(set(shown.get(canonical, {}).values())) <= 1, f"{canonical} means different things"
    for flag, where in shown.items():  # one flag, one meaning
        assert len(set(where.values())) == 1, f"{flag} stores into different places: {where}"
    assert {"train", "eval", "spp", "compare", "bench", "demo", "speedrun"} <= set(shown["--batch-size"])
    assert {"train", "eval", "spp", "compare", "bench"} <= set(shown["--data"])
    assert {"train", "eval", "spp", "bench", "demo"} <= set(shown["--image-size"])
    assert {"train", "spp", "compare", "demo", "speedrun"} <= set(shown["--out-dir"])


def test_batch_size_has_the_short_form_everywhere():
    for name, p in _subparsers().items():
        for action in _visible(p):
            if "--batch-size" in action.option_strings:
                assert "-b" in action.option_strings, name


def test_booleans_are_flag_and_no_flag():
    for name, p in _subparsers().items():
        for action in _visible(p):
            assert not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)), (
                f"normfree {name} {action.option_strings[0]}: use BooleanOptionalAction (--x / --no-x)")
            if isinstance(action, argparse.BooleanOptionalAction):
                long = [f for f in action.option_strings if f.startswith("--") and not f.startswith("--no-")]
                assert f"--no-{long[0][2:]}" in action.option_strings


OLD_NEW = [  # (subcommand and model, old spelling, its canonical form)
    (["spp", "nf_cifar_resnet20"], ["--batch", "8"], ["--batch-size", "8"]),
    (["spp", "nf_cifar_resnet20"], ["--input-size", "24"], ["--image-size", "24"]),
    (["spp", "nf_cifar_resnet20"], ["--out", "o"], ["--out-dir", "o"]),
    (["demo"], ["--batch", "8"], ["--batch-size", "8"]),
    (["demo"], ["--input-size", "24"], ["--image-size", "24"]),
    (["demo"], ["--out", "o"], ["--out-dir", "o"]),
    (["bench", "nf_cifar_resnet20"], ["--batch", "3"], ["--batch-size", "3"]),
    (["bench", "nf_cifar_resnet20"], ["--size", "20"], ["--image-size", "20"]),
    (["compare", "nf_cifar_resnet20", "--data", "synthetic"], ["--out", "o"], ["--out-dir", "o"]),
    (["compare", "nf_cifar_resnet20", "--data", "synthetic"], ["--batch-sizes", "16", "4"], ["-b", "16", "4"]),
    (["compare", "nf_cifar_resnet20", "--data", "synthetic"], ["--spp-batch", "8"], ["--spp-batch-size", "8"]),
    (["speedrun"], ["--out", "o"], ["--out-dir", "o"]),
    (["speedrun"], ["--no-warmup"], ["--no-cuda-warmup"]),
    (["eval", "c.safetensors"], ["--subset", "5"], ["--test-subset", "5"]),
    (["train"], ["--amp", "false"], ["--no-amp"]),
    (["train"], ["--tta-flip", "true"], ["--tta-flip"]),  # benchmarks/cifar10_nf_vs_bn's lanes type this
    (["train"], ["--grad-checkpointing", "on"], ["--grad-checkpointing"]),
]


@pytest.mark.parametrize("base, old, new", OLD_NEW, ids=lambda v: " ".join(v))
def test_old_spelling_still_works_and_says_so(base, old, new, capsys):
    parser = build_parser()
    want = vars(parser.parse_args([*base, *new]))
    assert "deprecated" not in capsys.readouterr().err
    got = vars(parser.parse_args([*base, *old]))
    err = capsys.readouterr().err
    assert got == want
    assert err.count("\n") == 1 and "deprecated" in err and new[0] in err, err


def test_every_hidden_alias_is_tested_above():
    tested = {(base[0], old[0]) for base, old, _ in OLD_NEW}
    for name, p in _subparsers().items():
        for action in _hidden(p):
            assert (name, action.option_strings[0]) in tested, f"normfree {name} {action.option_strings[0]}"
            visible = {a.dest for a in _visible(p)}
            assert action.dest in visible, f"{name} {action.option_strings}: alias of nothing"


def test_an_alias_satisfies_a_required_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["spp", "nf_cifar_resnet20"])
    assert stop.value.code == 2 and "required: --out-dir" in capsys.readouterr().err
    assert build_parser().parse_args(["spp", "nf_cifar_resnet20", "--out", "o"]).out_dir == "o"


def test_old_boolean_value_form_rejects_nonsense(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--amp", "maybe"])
    assert "expected true/false" in capsys.readouterr().err
    assert build_parser().parse_args(["train", "--amp", "--lr", "0.1"]).amp is True  # bare flag, next option


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    import normfree

    assert stop.value.code == 0 and capsys.readouterr().out.startswith(f"normfree {normfree.__version__}")


# ---- normfree models -----------------------------------------------------------------------------------

def test_models_lists_everything_from_the_table_without_building(monkeypatch, capsys):
    def no_building(name):
        raise AssertionError(f"built {name}")

    monkeypatch.setattr(models_cmd, "count_model", no_building)
    start = time.perf_counter()
    assert main(["models"]) == 0
    elapsed = time.perf_counter() - start
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == list_models() and elapsed < 3


def test_models_counts_models_missing_from_the_table(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(models_cmd, "TABLE", tmp_path / "none.json")
    assert main(["models", "nf_cifar_resnet20"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:4] == ["nf_cifar_resnet20", "0.27", "0.041", "32"]  # the README's numbers


CHEAP = [n for n in list_models() if "cifar_resnet20" in n] + ["nf_resnet26", "nf_regnet_b0"]


def test_model_table_is_current():
    """Fails when a model is added or a builder changes its size: run ``python tools/model_table.py``."""
    table = json.loads(models_cmd.TABLE.read_text())
    assert sorted(table) == sorted(list_models())
    for name in CHEAP:
        assert table[name] == models_cmd.count_model(name), name


@pytest.mark.slow
def test_model_table_is_current_for_every_model():
    table = json.loads(models_cmd.TABLE.read_text())
    for name in list_models():
        assert table[name] == models_cmd.count_model(name), name


def test_a_closed_pipe_ends_quietly():
    """``normfree models | head -1``: the reader closes the pipe; no BrokenPipe traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "normfree", "models"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # before the child has written anything: its first print hits a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err


# ---- under torchrun only rank 0 prints ---------------------------------------------------------------

@pytest.mark.parametrize("main_rank", [True, False])
def test_train_summary_only_on_rank_0(monkeypatch, capsys, main_rank):
    import normfree.train.trainer as trainer_mod

    class FakeTrainer:
        def __init__(self, cfg, resume=None, overwrite=False):
            self.dist = argparse.Namespace(main=main_rank)

        def fit(self):
            return {"model": "m", "steps": 3, "test_top1": 50.0}

    monkeypatch.setattr(trainer_mod, "Trainer", FakeTrainer)
    assert main(["train", "--data", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert ("summary: model=m, steps=3, test_top1=50" in out) == main_rank and (out == "") != main_rank
