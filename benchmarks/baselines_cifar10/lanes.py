"""Run benchmarks/baselines_cifar10/plan.yaml as resumable lanes, with the NF-vs-BN benchmark's runner.

The runner (claiming, resuming from ``last.safetensors``, ``--list``, ``--stage``) is
``benchmarks/cifar10_nf_vs_bn/lanes.py``, imported unchanged; only the plan and the output folder
differ: runs write into ``benchmarks/baselines_cifar10/exp/<table>/<name>_s<seed>/``.

Usage (repository root)::

    DATA_DIR=path/to/cifar10_npz_dir OMP_NUM_THREADS=1 python benchmarks/baselines_cifar10/lanes.py
    python benchmarks/baselines_cifar10/lanes.py --list
    python benchmarks/baselines_cifar10/lanes.py --stage b128 --device cuda
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
RUNNER = HERE.parent / "cifar10_nf_vs_bn" / "lanes.py"


def load_runner(exp: Path = HERE / "exp") -> ModuleType:
    """The NF-vs-BN lane runner, writing its runs under ``exp``."""
    spec = importlib.util.spec_from_file_location("cifar10_nf_vs_bn_lanes", RUNNER)
    assert spec is not None and spec.loader is not None
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    runner.EXP = exp  # read by runner.expand at call time
    return runner


if __name__ == "__main__":
    if "--plan" not in sys.argv:
        sys.argv[1:1] = ["--plan", str(HERE / "plan.yaml")]
    sys.exit(load_runner().main())
