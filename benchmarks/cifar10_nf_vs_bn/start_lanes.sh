#!/usr/bin/env bash
# Start N background lanes (default 2, one intra-op thread each) on the CIFAR-10 plan from a snapshot of
# the committed package, so editing the working tree cannot change runs in flight.
# Usage (repository root): DATA_DIR=path/to/cifar10_npz benchmarks/cifar10_nf_vs_bn/start_lanes.sh [N] [lanes.py args]
set -euo pipefail
n=${1:-2}; shift || true
: "${DATA_DIR:?set DATA_DIR to the folder with train.npz and test.npz}"
snap=${LANE_SRC:-${TMPDIR:-/tmp}/normfree_lane_src}/$(git rev-parse --short HEAD)
if [ ! -d "$snap/normfree" ]; then mkdir -p "$snap" && git archive HEAD normfree | tar -x -C "$snap"; fi
py=${PYTHON:-.venv/bin/python}
log=benchmarks/cifar10_nf_vs_bn/exp/lanes.log
mkdir -p "$(dirname "$log")"
for i in $(seq "$n"); do
  # PYTHONSAFEPATH: `python -m normfree.cli` would otherwise put the working tree ahead of the snapshot
  OMP_NUM_THREADS=1 PYTHONSAFEPATH=1 PYTHONPATH="$snap" nohup "$py" benchmarks/cifar10_nf_vs_bn/lanes.py "$@" >> "$log" 2>&1 &
  sleep 2  # lanes claim runs in order; a short gap keeps their first claims apart
done
echo "started $n lanes from $snap; progress: $log"
