#!/usr/bin/env bash
# DETR-R50 fine-tuned on PASCAL VOC from the COCO checkpoint: the recipe of the popular VOC fork
# (40 epochs, lr 1e-4, backbone 1e-5, drop at 30), with this project's VOC reader and evaluation.
# Usage: configs/detr_r50_voc_finetune.sh --voc_path /path/to/VOCdevkit [more main.py flags; later flags win]
# The fork trained on VOC 2012 train and reported VOC 2012 val (AP50 67.5, AP 47.3); the defaults
# here do the same. For the 07+12 protocol: --voc_years 2007,2012 --train_split trainval, then
# evaluate on VOC 2007 test (--voc_years 2007 --val_split test --eval --resume EXP_DIR/checkpoint.pth).
# --finetune takes a path, a URL or a hub entry name; the 92-way COCO class head is replaced by a
# 21-way one (20 VOC classes + no-object), every other weight is loaded.
set -euo pipefail
# Runs from the caller's folder: relative --voc_path, --output_dir and EXP_DIR are the caller's.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

EXP_DIR=${EXP_DIR:-exps/detr_r50_voc_finetune}
LAUNCH=${LAUNCH:-python -u}
PY_ARGS=("$@")

# shellcheck disable=SC2086  # LAUNCH is a command line and is meant to be split into words
${LAUNCH} "${ROOT}/main.py" \
    --model detr \
    --dataset_file voc --voc_years 2012 --train_split train --val_split val \
    --finetune detr_resnet50 \
    --epochs 40 --lr_drop 30 --lr 1e-4 --lr_backbone 1e-5 \
    --output_dir "${EXP_DIR}" \
    "${PY_ARGS[@]}"
