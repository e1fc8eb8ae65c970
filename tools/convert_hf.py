"""Convert checkpoints between Hugging Face transformers and this project (``models.hf_convert``).

    python tools/convert_hf.py --from-hf DIR --output model.pth    # transformers folder -> our checkpoint
    python tools/convert_hf.py --to-hf model.pth --output DIR      # ours (or an official one) -> folder

``DIR`` holds ``config.json`` and the weights of a ``DetrForObjectDetection``, ``DetrForSegmentation``
or ``DeformableDetrForObjectDetection``. The checkpoint written carries the architecture flags and
class names (``main.py --eval --resume model.pth`` rebuilds the model); the folder loads with
``from_pretrained(DIR)``. Outputs appear complete or not at all. Not in the official code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.hf_convert import BACKBONE_FORMATS, ConversionError, checkpoint_to_hf, convert_from_hf  # noqa: E402
from util.checkpoint import CheckpointError  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="DIR", help="transformers checkpoint folder to convert")
    direction.add_argument("--to-hf", metavar="CHECKPOINT", help="checkpoint (.pth path or URL) to convert")
    parser.add_argument("--output", required=True, help="--from-hf: the .pth to write; --to-hf: the folder to write")
    parser.add_argument(
        "--backbone-format",
        default="timm",
        choices=BACKBONE_FORMATS,
        help="--to-hf: backbone as a timm model (as the hub's checkpoints) or transformers' ResNetBackbone",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    a = get_parser().parse_args(argv)
    try:
        if a.from_hf:
            ckpt = convert_from_hf(a.from_hf, a.output)
            flags = " ".join(f"--{k} {v}" for k, v in ckpt["args"].items())
            print(f"wrote {a.output}: {len(ckpt['model'])} tensors, {len(ckpt['id2label'])} classes; flags: {flags}")
        else:
            out = checkpoint_to_hf(a.to_hf, a.output, backbone_format=a.backbone_format)
            print(f"wrote {out}: config.json, weights, preprocessor_config.json")
    except (ConversionError, CheckpointError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
