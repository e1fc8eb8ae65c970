#!/usr/bin/env bash
# Deformable DETR (multi-scale, R50) fine-tuned on PASCAL VOC from a COCO checkpoint: the DETR VOC
# recipe's schedule (40 epochs, drop at 30) with Deformable DETR's learning rates (2e-4, backbone
# 2e-5, sampling offsets x0.1). No measured reference exists for this recipe.
# Usage: configs/deformable_detr_voc_finetune.sh --voc_path /path/to/VOCdevkit [more main.py flags; later flags win]
# The start is the hub entry deformable_detr (SenseTime's COCO weights, converted on download);
# --finetune PATH|URL picks another (e.g. an official r50_deformable_detr-checkpoint.pth). The
# 91-way sigmoid class heads become 20-way ones, every other weight is loaded.
set -euo pipefail
# Runs from the caller's folder: relative --voc_path, --output_dir and EXP_DIR are the caller's.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

EXP_DIR=${EXP_DIR:-exps/deformable_detr_voc_finetune}
LAUNCH=${LAUNCH:-python -u}
PY_ARGS=("$@")

# shellcheck disable=SC2086  # LAUNCH is a command line and is meant to be split into words
${LAUNCH} "${ROOT}/main.py" \
    --model deformable_detr \
    --dataset_file voc --voc_years 2012 --train_split train --val_split val \
    --finetune deformable_detr \
    --epochs 40 --lr_drop 30 \
    --output_dir "${EXP_DIR}" \
    "${PY_ARGS[@]}"
