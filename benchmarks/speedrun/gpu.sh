#!/usr/bin/env bash
# The whole speedrun table on one CUDA GPU: the headline and ablation stages of plan.yaml (each run
# starts with untimed warm-up steps: cuDNN autotuning is not in wall_s), then results.csv / results.md.
#   DATA_DIR=path/to/cifar10_npz EXP=benchmarks/speedrun/exp benchmarks/speedrun/gpu.sh
# PYTHON defaults to python3 (a checkout without `pip install -e .` works: the repository root is put
# on PYTHONPATH). Every finished run is kept, so a second call after an interruption completes the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${DATA_DIR:?set DATA_DIR to a folder with train.npz and test.npz}"
EXP=${EXP:-benchmarks/speedrun/exp}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
for stage in headline ablation; do
    "$PY" benchmarks/speedrun/lanes.py --device cuda --stage "$stage" --exp "$EXP"
done
"$PY" benchmarks/speedrun/summarize.py --exp "$EXP" --out "$(dirname "$EXP")"
echo "gpu.sh: whole table in $(( $(date +%s) - start )) s"
