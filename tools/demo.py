"""The demo behind ``make demo``: generate the embedded synthetic data set, train a small DETR on
it through ``main.py`` (the real command line, progress printed as it runs), evaluate on the
held-out split, and leave in ``outputs/demo/``: ``log.txt``, ``checkpoint.pth``, ``eval.json``,
``curves.png`` (loss and AP per epoch) and ``predictions.png`` (validation images with predicted
boxes, ground truth in grey).

The recipe suits 2 CPU cores and no ImageNet weights (see shared calibration): ResNet-18 trained
from scratch with learning BatchNorm (``--train_backbone_all``), hidden 128, 1 encoder and 3
decoder layers, 10 queries, 96 px images, batch 16, one learning rate for everything.
``--model deformable_detr`` trains Deformable DETR instead (into ``outputs/demo_deformable``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = {"num_train": 3200, "num_val": 200, "image_size": 96, "seed": 0, "val_seed": 1}

COMMON = [
    "--backbone", "resnet18", "--backbone_weights", "none", "--train_backbone_all",
    "--batch_size", "16", "--num_workers", "1", "--device", "cpu",
    "--train_scales", "96", "--val_size", "96", "--max_size", "96", "--print_freq", "25",
]  # fmt: skip

RECIPES = {
    "detr": [
        "--model", "detr", "--hidden_dim", "128", "--nheads", "8", "--enc_layers", "1", "--dec_layers", "3",
        "--dim_feedforward", "512", "--num_queries", "10", "--dropout", "0.0",
        "--lr", "2e-4", "--lr_backbone", "2e-4", "--epochs", "10", "--lr_drop", "8",
    ],
    "deformable_detr": [
        "--model", "deformable_detr", "--hidden_dim", "128", "--nheads", "8", "--enc_layers", "1",
        "--dec_layers", "3", "--dim_feedforward", "512", "--num_queries", "30", "--num_feature_levels", "3",
        "--dropout", "0.0", "--lr", "2e-4", "--lr_backbone", "2e-4", "--epochs", "10", "--lr_drop", "8",
    ],
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description="Train and evaluate a small detector on the embedded data set.")
    parser.add_argument("--model", default="detr", choices=sorted(RECIPES))
    parser.add_argument("--out", default=None, help="default outputs/demo (DETR) or outputs/demo_deformable")
    parser.add_argument("--data", default=str(ROOT / "outputs" / "data" / "synthetic"))
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    a, extra = parser.parse_known_args()
    out = Path(a.out or ROOT / "outputs" / ("demo" if a.model == "detr" else "demo_deformable"))
    start = time.time()

    from datasets.synthetic import generate_synthetic_coco

    generate_synthetic_coco(a.data, **DATA)

    out.mkdir(parents=True, exist_ok=True)
    for stale in ("log.txt", "eval.json"):  # a fresh run, not appended to an old one
        (out / stale).unlink(missing_ok=True)
    recipe = list(RECIPES[a.model])
    if a.epochs is not None:
        recipe += ["--epochs", str(a.epochs), "--lr_drop", str(max(1, round(a.epochs * 0.8)))]
    cmd = [sys.executable, "-u", str(ROOT / "main.py"), *COMMON, *recipe,
           "--coco_path", a.data, "--output_dir", str(out), *extra]  # fmt: skip
    print("running:", " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)

    from tools.plot_logs import plot_logs
    from tools.visualize import draw_predictions

    plot_logs([out], out / "curves.png")
    data = Path(a.data)
    draw_predictions(out / "checkpoint.pth", data / "val2017", data / "annotations" / "instances_val2017.json",
                     out / "predictions.png", num_images=12, threshold=0.5)  # fmt: skip
    summary = json.loads((out / "eval.json").read_text())
    minutes = (time.time() - start) / 60
    print(
        f"\nDemo finished in {minutes:.1f} min. Held-out box AP50 = {summary['AP50']:.3f}, AP = {summary['AP']:.3f}\n"
        f"  {out}/eval.json        COCO metrics by name\n"
        f"  {out}/curves.png       loss and AP per epoch\n"
        f"  {out}/predictions.png  predictions on validation images (ground truth in grey)\n"
        f"  {out}/log.txt, {out}/checkpoint.pth"
    )


if __name__ == "__main__":
    main()
