#!/usr/bin/env bash
# DINO-4scale, R50, 12 epochs (IDEA-Research/DINO config/DINO/DINO_4scale.py with the options of its
# scripts/DINO_train_dist.sh: box noise 1.0). Paper's figure: 49.0 AP on COCO val2017.
# Usage: configs/dino_4scale.sh --coco_path /path/to/coco [more main.py flags; later flags win]
# Several GPUs: LAUNCH="torchrun --nproc_per_node=8" configs/dino_4scale.sh --coco_path ...
# (official: 8 GPUs x batch 2 = 16 images per step; the results are sensitive to the total batch).
set -euo pipefail
# Runs from the caller's folder: relative --coco_path, --output_dir and EXP_DIR are the caller's.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

EXP_DIR=${EXP_DIR:-exps/dino_4scale}
LAUNCH=${LAUNCH:-python -u}
PY_ARGS=("$@")

# shellcheck disable=SC2086  # LAUNCH is a command line and is meant to be split into words
${LAUNCH} "${ROOT}/main.py" \
    --model dino \
    --epochs 12 --lr_drop 11 --batch_size 2 \
    --dn_box_noise_scale 1.0 \
    --output_dir "${EXP_DIR}" \
    "${PY_ARGS[@]}"
