#!/usr/bin/env bash
# The GPU check: what a person with an NVIDIA GPU runs after the README's GPU set-up, in the repository root.
#
#   benchmarks/gpu_check.sh [OUT_DIR] [SIZE]        (SIZE: full, the default, or tiny for a quick look)
#
# 1. `suite.py engines`: which engines are usable and, where not, why;
# 2. the `gpu` tests;
# 3. a short run of resnet50, bert_base and ssd at FP32, FP16 and INT8 on every GPU engine (plus ort-cpu FP32,
#    the accuracy reference), batch 1;
# 4. each GPU cell re-timed by a bare loop on the same engine, ending in one table of what ran and what did not.
# Every step runs whatever the one before it gave; the exit status is that of the worst step.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu-check-$(date +%Y%m%d-%H%M%S)}
SIZE=${2:-full}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
worst=0
step() {
    echo "== $*" | tee -a "$OUT/gpu_check.log"
    "$@" 2>&1 | tee -a "$OUT/gpu_check.log"
    local status=${PIPESTATUS[0]}
    [ "$status" -gt "$worst" ] && worst=$status
    return 0
}

step "$PY" suite.py engines
step nvidia-smi
step "$PY" -m pytest -q -m gpu tests/ -rs
step "$PY" suite.py run --models resnet50,bert_base,ssd --engines ort-cpu,ort-cuda,ort-trt,tensorrt \
    --precisions fp32,fp16,int8 --batch-sizes 1 --size "$SIZE" --warmup-s 1 --duration-s 3 --out "$OUT/run"
step "$PY" benchmarks/gpu_bare_loop.py "$OUT/run"
echo "== everything above is in $OUT/gpu_check.log; exit status $worst"
exit "$worst"
