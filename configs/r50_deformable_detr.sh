#!/usr/bin/env bash
# Deformable DETR, official recipe "r50_deformable_detr" (fundamentalvision/Deformable-DETR configs/r50_deformable_detr.sh).
# Usage: configs/r50_deformable_detr.sh --coco_path /path/to/coco [more main.py flags]
# Several GPUs: LAUNCH="torchrun --nproc_per_node=8" configs/r50_deformable_detr.sh --coco_path ...
# (official: 8 GPUs x batch 4 = 32 images per step; scale --lr with the total batch if it differs).
set -euo pipefail
# Runs from the caller's folder: relative --coco_path, --output_dir and EXP_DIR are the caller's.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

EXP_DIR=${EXP_DIR:-exps/r50_deformable_detr}
LAUNCH=${LAUNCH:-python -u}
PY_ARGS=("$@")

# shellcheck disable=SC2086  # LAUNCH is a command line and is meant to be split into words
${LAUNCH} "${ROOT}/main.py" \
    --model deformable_detr \
    --output_dir "${EXP_DIR}" \
    "${PY_ARGS[@]}"
