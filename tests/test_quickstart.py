"""The README runs line by line: its set-up commands, then the quick start, each line in a subprocess as a
user types it; and every ``normfree ...`` line in the README and docs parses with today's flags."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from normfree.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BASH = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def _commands(block: str) -> list[str]:
    """The block's commands: comments stripped, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", block)
    lines = [re.sub(r"(^|\s)#.*$", "", ln).strip() for ln in text.splitlines()]
    return [ln for ln in lines if ln]


def test_readme_opens_with_exactly_the_two_setup_commands():
    first = BASH.search(README)
    assert README.index(first.group(0)) < README.index("\n## ")  # before any section
    assert _commands(first.group(1)) == ["make demo", "make test"]


def _quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return _commands(BASH.search(section).group(1))


def _in_process(cmd: str, capsys) -> str:
    """``normfree ARGS`` through the CLI's ``main`` in this process: what the line prints (asserting it
    exits 0 with no deprecation note), at the cost of no new interpreter and torch import. Warnings
    are filtered as a fresh interpreter filters them, so a deprecation a user would see fails here too."""
    from normfree.cli import main

    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", hidden)  # Python's defaults outside __main__
        code = main(shlex.split(cmd)[1:])
    out, err = capsys.readouterr()
    assert code in (0, None), f"{cmd}\n{err[-2000:]}"
    assert "deprecated" not in err + " ".join(str(w.message) for w in caught), cmd
    return out


def test_quick_start_runs_line_by_line(tmp_path, monkeypatch, capsys):
    """The lines a user types, in order, in the folder they start from. The first ``normfree`` line and
    every ``python`` line run in a subprocess of this venv (the entry point on PATH, a fresh
    interpreter); the other ``normfree`` lines run through the same ``main`` in this process."""
    commands = _quick_start()
    assert commands[0] == "source .venv/bin/activate"  # what `make demo` created; here: this interpreter's venv
    bindir = Path(sys.executable).parent
    assert (bindir / "normfree").is_file(), "the venv running the tests has no normfree entry point"
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    monkeypatch.chdir(tmp_path)
    outputs, spawned = {}, []
    for cmd in commands[1:]:
        key = shlex.split(cmd)[1] if cmd.startswith("normfree") else cmd.split()[0]
        if cmd.startswith("normfree ") and any(c.startswith("normfree ") for c in spawned):
            outputs[key] = _in_process(cmd, capsys)
            continue
        done = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{cmd}\n{done.stderr[-2000:]}"
        assert "deprecated" not in done.stderr, cmd
        outputs[key] = done.stdout
        spawned.append(cmd)
    assert [c.split()[0] for c in spawned] == ["normfree", "python"]
    import normfree

    assert outputs["--version"].startswith(f"normfree {normfree.__version__}")
    assert outputs["models"].splitlines()[1].split()[:2] == ["nf_resnet26", "16.00"]
    assert "on demo:sklearn_digits" in outputs["eval"] and "297 images at 8x8" in outputs["eval"]
    assert re.search(r"raw: top-1 \d+\.\d+%", outputs["eval"])
    from normfree.analysis.spp import load_json

    assert load_json(tmp_path / "out/spp_digits/spp.json")[0].input_shape == [16, 1, 8, 8]  # gray 8x8 digits, as the checkpoint was trained
    assert "(1, 8, 8)" in outputs["python"] and "'crop_pct': 1.0" in outputs["python"]


def _documented_commands() -> list[tuple[str, list[str]]]:
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in BASH.findall(path.read_text()):
            for cmd in _commands(block):
                words = shlex.split(cmd.split("|")[0].split(">")[0])
                while words and re.fullmatch(r"[A-Z_]+=\S*|nice|-n|\d+|torchrun|--nproc_per_node=\d+|-m", words[0]):
                    words = words[1:]  # environment assignments, nice, torchrun -m
                if words and words[0].endswith("normfree") and words[0] != "make":
                    out.append((path.name, words[1:]))
    return out


@pytest.mark.parametrize("where, args", _documented_commands(),
                         ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else v)
def test_documented_commands_use_current_flags(where, args, capsys):
    """Every ``normfree ...`` command in the README and docs parses, with no deprecated spelling."""
    try:
        build_parser().parse_args(args)
    except SystemExit as stop:
        assert stop.code == 0, f"{where}: normfree {' '.join(args)}: {capsys.readouterr().err}"
    assert "deprecated" not in capsys.readouterr().err, f"{where}: normfree {' '.join(args)}"
