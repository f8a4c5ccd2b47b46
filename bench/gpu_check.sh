#!/usr/bin/env bash
# Issue 22's GPU checks, prepared to run as one device command each (one H200, the image's
# python3 with torch and triton; results under $OUT, else bench/results/gpu):
#
#   bash bench/gpu_check.sh kernels   # ~3 min: kernel tests compiled on the GPU (bit-identity
#                                     # on CUDA), codec round trips vs x.clone(), PTX check
#   bash bench/gpu_check.sh step      # ~5 min: 350M bf16 eager (with --profile) and --compile
#   bash bench/gpu_check.sh grid      # ~6 min: 350M --compile at micro batch 16, seq 1024/2048
#
# Each prints what the README's GPU tables quote; logs and JSON go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
SIZE="--device cuda --size 350m --bf16"
case "${1:-kernels}" in
  kernels)
    $PY -m pytest -q -p no:cacheprovider tests/test_codec_kernels.py tests/test_codecs.py \
        tests/test_hquant.py 2>&1 | tee "$OUT/kernel_tests.log" | tail -15
    $PY -m bench.codec_kernels --device cuda --out "$OUT/codec_kernels.json" 2>&1 | tee "$OUT/codec_kernels.log"
    ;;
  step)
    $PY -m bench.model_overhead $SIZE --runs 3 --steps 10 --profile \
        --out "$OUT/model_overhead_eager.json" 2>&1 | tee "$OUT/model_overhead_eager.log"
    $PY -m bench.model_overhead $SIZE --compile --runs 3 --steps 10 \
        --out "$OUT/model_overhead_compile.json" 2>&1 | tee "$OUT/model_overhead_compile.log"
    ;;
  grid)
    $PY -m bench.model_overhead $SIZE --compile --runs 3 --steps 5 --grid 16x1024,16x2048 \
        --out "$OUT/model_overhead_grid.json" 2>&1 | tee "$OUT/model_overhead_grid.log"
    ;;
  *) echo "usage: bash bench/gpu_check.sh kernels|step|grid" >&2; exit 2 ;;
esac
