#!/usr/bin/env bash
# DETR, official recipe "detr_r101_dc5" (facebookresearch/detr README): 300 epochs, LR drop at 200.
# Usage: configs/detr_r101_dc5.sh --coco_path /path/to/coco [more main.py flags; later flags win]
# Several GPUs: LAUNCH="torchrun --nproc_per_node=8" configs/detr_r101_dc5.sh --coco_path ...
# (official: 8 V100 x batch 4 for R50; 16 GPUs for DC5 and R101; scale --lr if the total batch differs).
set -euo pipefail
# Runs from the caller's folder: relative --coco_path, --output_dir and EXP_DIR are the caller's.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

EXP_DIR=${EXP_DIR:-exps/detr_r101_dc5}
LAUNCH=${LAUNCH:-python -u}
PY_ARGS=("$@")

# shellcheck disable=SC2086  # LAUNCH is a command line and is meant to be split into words
${LAUNCH} "${ROOT}/main.py" \
    --model detr \
    --output_dir "${EXP_DIR}" \
    --backbone resnet101 --dilation \
    "${PY_ARGS[@]}"
