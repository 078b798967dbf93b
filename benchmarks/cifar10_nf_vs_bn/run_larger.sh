#!/usr/bin/env bash
# Larger (still reduced) CIFAR-10 budget: ALL 50,000 training images, 3 epochs, full 10,000-image test set.
# Two lanes run in parallel (one intra-op thread each) on the 2-core CPU.
# Usage (from the repository root): nice -n 10 benchmarks/cifar10_nf_vs_bn/run_larger.sh
set -euo pipefail
export OMP_NUM_THREADS=1
DATA=npz:${DATA_DIR:-/work/shared/data/cifar10_jpeg}
OUT=benchmarks/cifar10_nf_vs_bn/logs_larger
COMMON=(--data "$DATA" --epochs 3 --warmup-epochs 1 --weight-decay 5e-4 --momentum 0.9 --eval-every 1
        --log-every 50 --seed 0)
run() {  # NAME MODEL BATCH LR [extra flags...]
  local name=$1 model=$2 bs=$3 lr=$4; shift 4
  mkdir -p "$OUT/$name"
  echo "== $name: $(date -u)"
  .venv/bin/normfree train --model "$model" "${COMMON[@]}" --batch-size "$bs" --lr "$lr" "$@" \
      --out-dir "$OUT/$name" 2>&1 | tr '\r' '\n' | grep -v '%|' > "$OUT/$name/stdout.log"
  tail -1 "$OUT/$name/stdout.log"
}
( run nf_bs128 nf_cifar_resnet20 128 0.1
  run bn_bs128 bn_cifar_resnet20 128 0.1
  run nf_bs128_skip1 nf_cifar_resnet20 128 0.1 --model-kwargs '{"skipinit_gain": 1}' ) &
( run nf_bs8 nf_cifar_resnet20 8 0.00625
  run bn_bs8 bn_cifar_resnet20 8 0.00625 ) &
wait
