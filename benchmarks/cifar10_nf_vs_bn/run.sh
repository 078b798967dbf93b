#!/usr/bin/env bash
# Reduced-budget CIFAR-10 benchmark: NF-ResNet-20 vs its BN twin, same recipe, batch 128 and batch 8.
# Usage (from the repository root): nice -n 10 benchmarks/cifar10_nf_vs_bn/run.sh [SEED]
# Budget (2-core shared CPU): first 4000 training images, 3 epochs, evaluation on the first 2000 test images.
# Variants: NETS="nf" BATCHES="128" TAG=_sd0 EXTRA='--model-kwargs {"stochdepth_rate":0}' run.sh 0
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # 2 shared cores: oversubscribed intra-op threads are far slower
SEED=${1:-0}
DATA=npz:${DATA_DIR:-/work/shared/data/cifar10_jpeg}
OUT=benchmarks/cifar10_nf_vs_bn/logs
COMMON=(--data "$DATA" --train-subset 4000 --test-subset 2000 --epochs 3 --warmup-epochs 1
        --weight-decay 5e-4 --momentum 0.9 --eval-every 3 --log-every 10 --seed "$SEED")
for BS in ${BATCHES:-128 8}; do
  BS_LR=${LR:-$(python3 -c "print(0.1 * $BS / 128)")}   # linear lr scaling from 0.1 at batch 128
  for NET in ${NETS:-nf bn}; do
    RUN=$OUT/${NET}_bs${BS}${TAG:-}_seed${SEED}
    mkdir -p "$RUN"
    echo "== $RUN lr $BS_LR ${EXTRA:-}: $(date -u)"
    # shellcheck disable=SC2086
    .venv/bin/normfree train --model ${NET}_cifar_resnet20 "${COMMON[@]}" --batch-size "$BS" --lr "$BS_LR" \
        ${EXTRA:-} --out-dir "$RUN" 2>&1 | tr '\r' '\n' | grep -v '%|' > "$RUN/stdout.log"
    tail -1 "$RUN/stdout.log"
  done
done
