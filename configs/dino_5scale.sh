#!/usr/bin/env bash
# DINO-5scale, R50, 12 epochs (IDEA-Research/DINO config/DINO/DINO_5scale.py with the options of its
# scripts/DINO_train_submitit_5scale.sh: box noise 1.0): layer1-4 of the backbone and one more
# strided level. Paper's figure: 49.4 AP on COCO val2017.
# Usage: configs/dino_5scale.sh --coco_path /path/to/coco [more main.py flags; later flags win]
# Several GPUs: LAUNCH="torchrun --nproc_per_node=8" configs/dino_5scale.sh --coco_path ...
# (official: 16 GPUs x batch 1 = 16 images per step; the results are sensitive to the total batch).
set -euo pipefail
# Runs from the caller's folder: relative --coco_path, --output_dir and EXP_DIR are the caller's.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

EXP_DIR=${EXP_DIR:-exps/dino_5scale}
LAUNCH=${LAUNCH:-python -u}
PY_ARGS=("$@")

# shellcheck disable=SC2086  # LAUNCH is a command line and is meant to be split into words
${LAUNCH} "${ROOT}/main.py" \
    --model dino --num_feature_levels 5 \
    --epochs 12 --lr_drop 11 --batch_size 1 \
    --dn_box_noise_scale 1.0 \
    --output_dir "${EXP_DIR}" \
    "${PY_ARGS[@]}"
