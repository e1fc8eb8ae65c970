#!/usr/bin/env bash
# Deformable DETR, official recipe "r50_deformable_detr_plus_iterative_bbox_refinement" (fundamentalvision/Deformable-DETR configs/r50_deformable_detr_plus_iterative_bbox_refinement.sh).
# Usage: configs/r50_deformable_detr_plus_iterative_bbox_refinement.sh --coco_path /path/to/coco [more main.py flags]
# Several GPUs: LAUNCH="torchrun --nproc_per_node=8" configs/r50_deformable_detr_plus_iterative_bbox_refinement.sh --coco_path ...
# (official: 8 GPUs x batch 4 = 32 images per step; scale --lr with the total batch if it differs).
set -euo pipefail
cd "$(dirname "$0")/.."

EXP_DIR=${EXP_DIR:-exps/r50_deformable_detr_plus_iterative_bbox_refinement}
LAUNCH=${LAUNCH:-python -u}
PY_ARGS=("$@")

# shellcheck disable=SC2086  # LAUNCH is a command line and is meant to be split into words
${LAUNCH} main.py \
    --model deformable_detr \
    --output_dir "${EXP_DIR}" \
    --with_box_refine \
    "${PY_ARGS[@]}"
