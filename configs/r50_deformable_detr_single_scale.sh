#!/usr/bin/env bash
# Deformable DETR, official recipe "r50_deformable_detr_single_scale" (fundamentalvision/Deformable-DETR configs/r50_deformable_detr_single_scale.sh).
# Usage: configs/r50_deformable_detr_single_scale.sh --coco_path /path/to/coco [more main.py flags]
# Several GPUs: LAUNCH="torchrun --nproc_per_node=8" configs/r50_deformable_detr_single_scale.sh --coco_path ...
# (official: 8 GPUs x batch 4 = 32 images per step; scale --lr with the total batch if it differs).
set -euo pipefail
cd "$(dirname "$0")/.."

EXP_DIR=${EXP_DIR:-exps/r50_deformable_detr_single_scale}
LAUNCH=${LAUNCH:-python -u}
PY_ARGS=("$@")

# shellcheck disable=SC2086  # LAUNCH is a command line and is meant to be split into words
${LAUNCH} main.py \
    --model deformable_detr \
    --output_dir "${EXP_DIR}" \
    --num_feature_levels 1 \
    "${PY_ARGS[@]}"
