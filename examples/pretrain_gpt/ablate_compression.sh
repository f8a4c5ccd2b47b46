#!/usr/bin/env bash
# Ablate pipeline compression: every cell of a grid (method x codecs x model x lazy-sampling p
# x data regime) is a real torchrun training run; then a CSV, a markdown table and plots.
#
#   GRID=examples/pretrain_gpt/grids/cpu.yaml bash examples/pretrain_gpt/ablate_compression.sh
#   GRID=examples/pretrain_gpt/grids/gpu.yaml OUT_DIR=/scratch/ablation bash ... --only gpt2-125m
#
# Environment (defaults in brackets): GRID [grids/cpu.yaml], OUT_DIR [runs/ablation/<grid name>],
# REPORT_DIR [OUT_DIR], PYTHON [python]. Extra arguments go to tools/ablate.py (--only SUBSTR...,
# --list, --dry-run, --report-only). Finished cells are skipped: rerun to resume.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
ARGS=(--grid "${GRID:-$SCRIPT_DIR/grids/cpu.yaml}")
if [[ -n "${OUT_DIR:-}" ]]; then ARGS+=(--out-dir "$OUT_DIR"); fi
if [[ -n "${REPORT_DIR:-}" ]]; then ARGS+=(--report-dir "$REPORT_DIR"); fi
exec "${PYTHON:-python}" "$REPO/tools/ablate.py" "${ARGS[@]}" "$@"
