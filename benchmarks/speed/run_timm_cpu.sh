#!/bin/sh
# CPU benchmarks against timm in the same process (issue 7). Run from the repository root with a venv
# that has timm: here /work/wt/timmenv (torch 2.14.1+cu130 build run on CPU, timm 1.0.31), normfree
# installed with `pip install --no-deps -e .`. Each output file records `uptime` before and after.
set -e
PY=${PY:-/work/wt/timmenv/bin/python}
D=benchmarks/speed
T=torch2.14.1_timm
run() {  # run OUTNAME ARGS...
    out=$1; shift
    { echo "\$ nice -n 10 normfree bench $*"; echo "uptime before: $(uptime)"; } > "$D/$out.txt"
    nice -n 10 "$PY" -m normfree.cli bench "$@" --json "$D/$out.json" 2>"/tmp/$out.stderr" >> "$D/$out.txt"
    echo "uptime after: $(uptime)" >> "$D/$out.txt"
    cat "$D/$out.txt"
}
run train_cpu_b8_s128_t1_$T nf_resnet50 --train --batch 8 --size 128 --warmup 1 --repeats 9 --steps 1 --threads 1
run train_cpu_b16_s160_t1_$T nf_resnet50 --train --batch 16 --size 160 --warmup 1 --repeats 7 --steps 1 --threads 1
[ -n "$TRAIN_ONLY" ] && exit 0
run infer_deploy_cpu_b8_s224_t1_$T nf_resnet50 --infer --deploy --batch 8 --size 224 --warmup 1 --repeats 5 --steps 2 --threads 1
