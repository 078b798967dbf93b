#!/bin/sh
# CPU benchmarks: NF-ResNet-50 vs its BN twin (and timm's nf_resnet50 / resnet50 in the same
# process when the venv has timm). Run from the repository root:
#   sh benchmarks/speed/run_cpu.sh                                   # .venv (torch 2.13.0, no timm)
#   PY=/path/to/timm-venv/bin/python sh benchmarks/speed/run_cpu.sh  # a venv with timm + normfree
#   MODEL=nf_resnet50:stochdepth_rate=0 TAG=_sd0 TRAIN_ONLY=1 sh benchmarks/speed/run_cpu.sh
# One thread, nice 10, warm-up 1, interleaved rounds. Output names carry the torch version (and "timm"
# when timm models ran); each .txt records `uptime` before and after.
set -e
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-nf_resnet50}
D=benchmarks/speed
T=torch$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
"$PY" -c 'import timm' 2>/dev/null && T=${T}_timm
T=$T${TAG:-}
ERR=$(mktemp -d)  # each run's stderr (progress bars, warnings)
run() {  # run OUTNAME ARGS...
    out=$1; shift
    { echo "\$ nice -n 10 normfree bench $*"; echo "uptime before: $(uptime)"; } > "$D/$out.txt"
    nice -n 10 "$PY" -m normfree.cli bench "$@" --json "$D/$out.json" 2>"$ERR/$out.stderr" >> "$D/$out.txt"
    echo "uptime after: $(uptime)" >> "$D/$out.txt"
    cat "$D/$out.txt"
}
run train_cpu_b8_s128_t1_$T "$MODEL" --train --batch-size 8 --image-size 128 --warmup 1 --repeats 9 --steps 1 --threads 1
run train_cpu_b16_s160_t1_$T "$MODEL" --train --batch-size 16 --image-size 160 --warmup 1 --repeats 7 --steps 1 --threads 1
[ -n "$TRAIN_ONLY" ] && exit 0
run infer_deploy_cpu_b8_s224_t1_$T "$MODEL" --infer --deploy --batch-size 8 --image-size 224 --warmup 1 --repeats 5 --steps 2 --threads 1
