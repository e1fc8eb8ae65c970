"""Convert checkpoints between Hugging Face transformers and this project (``models.hf_convert``).

    python tools/convert_hf.py --from-hf DIR --output model.pth    # transformers folder -> our checkpoint
    python tools/convert_hf.py --to-hf model.pth --output DIR      # ours (or an official one) -> folder

``DIR`` holds ``config.json`` and the weights of a ``DetrForObjectDetection``, ``DetrForSegmentation``
or ``DeformableDetrForObjectDetection``. The checkpoint written carries the architecture flags and
class names (``main.py --eval --resume model.pth`` rebuilds the model); the folder loads with
``from_pretrained(DIR)``; class ids are kept (those without a name are "N/A"), and a checkpoint
without names with the official class count (91, or 250 for panoptic) gets the COCO names, as the
hub's ``facebook/detr-resnet-50``. Outputs appear complete or not at all. Not in the official code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="DIR", help="transformers checkpoint folder to convert")
    direction.add_argument("--to-hf", metavar="CHECKPOINT", help="checkpoint (.pth path or URL) to convert")
    parser.add_argument("--output", required=True, help="--from-hf: the .pth to write; --to-hf: the folder to write")
    parser.add_argument(
        "--backbone-format",
        default="timm",
        help="--to-hf: 'timm' (a timm model, as the hub's checkpoints) or 'transformers' (its ResNetBackbone)",
    )
    return parser


if __name__ == "__main__":
    get_parser().parse_args()  # --help and bad arguments answered before torch is imported

from datasets.coco_names import COCO_NUM_CLASSES, COCO_PANOPTIC_NAMES  # noqa: E402
from models.hf_convert import (  # noqa: E402
    BACKBONE_FORMATS,
    ConversionError,
    arch_from_checkpoint,
    checkpoint_to_hf,
    convert_from_hf,
)
from util.checkpoint import CheckpointError, load_checkpoint  # noqa: E402


def official_names(ckpt: dict[str, Any], source: str) -> dict[int, str] | None:
    """The COCO names for a checkpoint without names with the official models' class count (91
    for detection, 250 for panoptic; the ids without a name become "N/A", as on the hub)."""
    num_classes = arch_from_checkpoint(ckpt, source)["num_classes"]
    if num_classes in COCO_NUM_CLASSES.values():
        return {i: name for i, name in COCO_PANOPTIC_NAMES.items() if i < num_classes}
    return None


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    a = parser.parse_args(argv)
    if a.backbone_format not in BACKBONE_FORMATS:
        parser.error(f"--backbone-format: choose from {', '.join(BACKBONE_FORMATS)}, not '{a.backbone_format}'")
    try:
        if a.from_hf:
            ckpt = convert_from_hf(a.from_hf, a.output)
            flags = " ".join(f"--{k} {v}" for k, v in ckpt["args"].items())
            print(f"wrote {a.output}: {len(ckpt['model'])} tensors, {len(ckpt['id2label'])} classes; flags: {flags}")
        else:
            ckpt = load_checkpoint(a.to_hf)
            names = None if ckpt.get("id2label") else official_names(ckpt, a.to_hf)
            out = checkpoint_to_hf(ckpt, a.output, backbone_format=a.backbone_format, id2label=names, source=a.to_hf)
            print(f"wrote {out}: config.json, weights, preprocessor_config.json")
    except (ConversionError, CheckpointError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
