#!/usr/bin/env bash
# Panoptic DETR, official two-stage recipe (facebookresearch/detr README):
#   stage 1: box model on things and stuff (coco_panoptic), 300 epochs (or start from detr_r50);
#   stage 2: mask head only, --masks --frozen_weights <stage 1 checkpoint>, 25 epochs, LR drop at 15.
# Usage: configs/detr_r50_panoptic.sh --coco_path /coco --coco_panoptic_path /coco_panoptic \
#            --frozen_weights exps/detr_r50_panoptic_boxes/checkpoint.pth [more flags]
set -euo pipefail
# Runs from the caller's folder: relative --coco_path, --output_dir and EXP_DIR are the caller's.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

EXP_DIR=${EXP_DIR:-exps/detr_r50_panoptic}
LAUNCH=${LAUNCH:-python -u}
PY_ARGS=("$@")

# shellcheck disable=SC2086  # LAUNCH is a command line and is meant to be split into words
${LAUNCH} "${ROOT}/main.py" \
    --model detr \
    --dataset_file coco_panoptic \
    --masks \
    --epochs 25 \
    --lr_drop 15 \
    --output_dir "${EXP_DIR}" \
    "${PY_ARGS[@]}"
