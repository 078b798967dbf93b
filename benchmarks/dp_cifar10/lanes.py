"""Run the DP CIFAR-10 plan (plan.yaml) as resumable lanes: the lane runner of
``benchmarks/cifar10_nf_vs_bn/lanes.py`` (claim the next run, train or resume it, move on), pointed at
this folder's plan and ``exp/``.

Usage (repository root)::

    DATA_DIR=path/to/cifar10_npz_dir OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dp_cifar10/lanes.py
    .venv/bin/python benchmarks/dp_cifar10/lanes.py --list                 # every run and its state
    DATA_DIR=... .venv/bin/python benchmarks/dp_cifar10/lanes.py --stage de2022_gpu --device cuda

Start one process per spare core for more lanes. ``DATA_DIR`` holds ``train.npz``/``test.npz`` (uint8 NHWC
``x``, int64 ``y``, the full 50k/10k split). Runs write into ``exp/<table>/<name>_s<seed>/``.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

HERE = Path(__file__).resolve().parent
EXP = HERE / "exp"


_spec = importlib.util.spec_from_file_location("nf_vs_bn_lanes", HERE.parent / "cifar10_nf_vs_bn" / "lanes.py")
assert _spec is not None and _spec.loader is not None
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)


def expand_plan(stage: str | None = None) -> Iterator[dict[str, Any]]:
    """This plan's runs in execution order."""
    return runner.expand(yaml.safe_load((HERE / "plan.yaml").read_text()), stage, EXP)


if __name__ == "__main__":
    sys.exit(runner.main(plan=HERE / "plan.yaml", exp=EXP))
