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

HERE = Path(__file__).resolve().parent
RUNNER = HERE.parent / "cifar10_nf_vs_bn" / "lanes.py"


_spec = importlib.util.spec_from_file_location("cifar10_nf_vs_bn_lanes", RUNNER)
assert _spec is not None and _spec.loader is not None
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)

if __name__ == "__main__":
    sys.exit(runner.main(plan=HERE / "plan.yaml", exp=HERE / "exp"))
