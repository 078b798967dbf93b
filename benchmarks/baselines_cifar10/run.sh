#!/usr/bin/env bash
# Reduced-budget CIFAR-10 comparison of NF-ResNet-20 and every baseline twin, batch 128 and batch 8.
# Usage (from the repository root): DATA_DIR=path/to/cifar10_npz nice -n 10 benchmarks/baselines_cifar10/run.sh
# Budget (2-core shared CPU, see results.md): first 2000 training images, 2 epochs (0.5 warmup),
# evaluation on the first 2000 test images, peak lr 0.1 x batch / 128, one seed.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # 2 shared cores: oversubscribed intra-op threads are far slower
OUT=${OUT:-benchmarks/baselines_cifar10/out}
DATA=npz:${DATA_DIR:?set DATA_DIR to the folder with CIFAR-10 as train.npz and test.npz}
mkdir -p "$OUT"
{ echo "start: $(date -u) | $(uptime)"; echo "cores: $(nproc --all)"; } > "$OUT/machine.log"
MODELS=()
for p in nf bn relubn revbn gnws evob0 evos0 fixup skipinit; do MODELS+=("${p}_cifar_resnet20"); done
.venv/bin/normfree compare "${MODELS[@]}" --data "$DATA" --out-dir "$OUT" --batch-size 128 8 \
    --epochs 2 --warmup-epochs 0.5 --train-subset 2000 --test-subset 2000 --lr 0.1 --lr-batch 128 \
    --spp-skipinit-gain 1 --seed 0 --device cpu 2>&1 | tr '\r' '\n' | grep -v '%|' | grep -v '^ *$' > "$OUT/stdout.log"
echo "end: $(date -u) | $(uptime)" >> "$OUT/machine.log"
# Same process, interleaved: training-step throughput of every variant (out/throughput.{json,log}).
.venv/bin/python benchmarks/baselines_cifar10/throughput.py "$OUT/throughput.json" > "$OUT/throughput.log" 2>&1
