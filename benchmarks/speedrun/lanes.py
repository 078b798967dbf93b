"""Run the speedrun plan (plan.yaml) as resumable lanes, on CPU cores or one GPU.

Each lane takes the next run of the plan that is neither finished nor held by a live lane and trains it
with ``normfree speedrun`` into ``exp/<table>/<name>/s<seed>/`` (checkpoint after every epoch,
``result.json`` when done, ``stdout.log``, ``command.txt``). An interrupted run continues from its
checkpoint the next time a lane reaches it. Plan order, lock files and logging are those of the
CIFAR-10 NF-vs-BN lanes (imported from ``benchmarks/cifar10_nf_vs_bn/lanes.py``).

Usage (repository root)::

    DATA_DIR=path/to/cifar10_npz OMP_NUM_THREADS=1 python benchmarks/speedrun/lanes.py --threads 1
    python benchmarks/speedrun/lanes.py --list
    DATA_DIR=... python benchmarks/speedrun/lanes.py --device cuda --stage headline
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from normfree.train.speedrun import get_recipe

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("nf_vs_bn_lanes", HERE.parent / "cifar10_nf_vs_bn" / "lanes.py")
assert _spec is not None and _spec.loader is not None
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def runs(plan: dict[str, Any], exp: Path, stage: str | None = None) -> list[dict[str, Any]]:
    """The plan's runs in execution order, each with its run folder under ``exp``."""
    out = []
    for run in common.expand(plan, stage):
        values = dict(run["values"])
        values.pop("seed")
        out.append({**run, "values": values, "cell": exp / run["table"] / run["name"],
                    "dir": exp / run["table"] / run["name"] / f"s{run['seed']}"})
    return out


def command(run: dict[str, Any], data: str, device: str, threads: int) -> list[str]:
    """``normfree speedrun`` for one seed; plan values become ``--set KEY=VALUE`` except CLI flags."""
    values = dict(run["values"])
    flags = [f"--{k.replace('_', '-')}={values.pop(k)}" for k in ("train_subset", "test_subset") if k in values]
    sets = [f"--set={k}={v!r}" for k, v in values.items()]
    return [sys.executable, "-m", "normfree.cli", "speedrun", "--recipe", run["recipe"], "--data", data,
            "--device", device, "--seed", str(run["seed"]), "--out-dir", os.path.relpath(run["cell"]),
            *(["--threads", str(threads)] if threads else []), *flags, *sets]


def state(run: dict[str, Any]) -> str:
    d = run["dir"]
    if (d / "failed").exists():
        return "failed"
    if (d / "result.json").exists():
        return "done"
    return "partial" if (d / "checkpoint.safetensors").exists() else "todo"


def epochs_of(run: dict[str, Any]) -> float:
    return float(run["values"].get("epochs", get_recipe(run["recipe"]).epochs))


def expected_seconds(run: dict[str, Any], runs: list[dict[str, Any]], state_of: Any = state,
                     device: str = "cpu") -> float | None:
    """How long ``run`` should take on ``device``: its epochs × the median seconds per epoch of the runs
    finished there on the same images (the same ``train_subset``/``test_subset``), as the ablation mixes
    budgets (9.9 to 19.8 epochs) in one table; else the stage's ``minutes``, else None (unknown)."""
    def data(r: dict[str, Any]) -> tuple[Any, Any]:
        return r["values"].get("train_subset"), r["values"].get("test_subset")

    rates = []
    for r in runs:
        if data(r) == data(run) and state_of(r) == "done":
            result = json.loads((r["dir"] / "result.json").read_text())
            if result["device"].startswith(device):
                rates.append(result["wall_s"] / epochs_of(r))
    if rates:
        return epochs_of(run) * statistics.median(rates)
    return 60.0 * run["minutes"] if run.get("minutes") else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default=str(HERE / "plan.yaml"))
    parser.add_argument("--exp", default=str(HERE / "exp"), help="folder of the run folders")
    parser.add_argument("--stage", help="run only this stage of the plan")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per run (default: torch's)")
    parser.add_argument("--list", action="store_true", help="print every run with its state and exit")
    parser.add_argument("--until", help="HH:MM: start only runs expected to finish by then")
    args = parser.parse_args()
    plan = yaml.safe_load(Path(args.plan).read_text())
    todo = runs(plan, Path(args.exp), args.stage)
    if args.list:
        for r in todo:
            print(f"{state(r):8s} {r['table']}/{r['name']}/s{r['seed']}")
        return 0
    data = common.data_dir()
    if data is None:
        return 2

    def command_of(run: dict[str, Any]) -> list[str]:
        cmd = command(run, f"npz:{data}", args.device, args.threads)
        (run["dir"] / "command.txt").write_text(" ".join(["normfree", *cmd[3:]]) + "\n")
        return cmd

    def drop_checkpoint(run: dict[str, Any]) -> None:  # result.json holds everything; it only served a resume
        (run["dir"] / "checkpoint.safetensors").unlink(missing_ok=True)

    return common.run_plan(todo, command_of, state, label=lambda r: f"{r['table']}/{r['name']}/s{r['seed']}",
                           after=drop_checkpoint, deadline=common.parse_until(args.until),
                           expected=functools.partial(expected_seconds, device=args.device))


if __name__ == "__main__":
    sys.exit(main())
