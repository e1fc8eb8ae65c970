"""End to end through ``main.py`` on a tiny generated panoptic data set (6 train / 4 val, 64 px):
the official two-stage panoptic recipe (boxes on ``coco_panoptic``, then ``--masks
--frozen_weights``, evaluated with PQ) and instance segmentation (``--masks --dataset_file coco``)
on the same data's detection files. Tiny models, one epoch each: this checks the plumbing, not
the accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datasets.synthetic_panoptic import generate_synthetic_panoptic

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

TINY = [
    "--backbone", "resnet18", "--backbone_weights", "none", "--train_backbone_all",
    "--hidden_dim", "32", "--nheads", "8", "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "64",
    "--num_queries", "10", "--train_scales", "64", "--val_size", "64", "--max_size", "64",
    "--num_workers", "0", "--epochs", "1", "--batch_size", "2", "--device", "cpu", "--print_freq", "100",
]  # fmt: skip


def _main(*flags: str, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *flags, *TINY],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_panoptic")
    generate_synthetic_panoptic(root, num_train=6, num_val=4, image_size=64, seed=0, verbose=False)
    return root


def test_panoptic_two_stages(data: Path, tmp_path: Path) -> None:
    paths = ["--dataset_file", "coco_panoptic", "--coco_path", str(data), "--coco_panoptic_path", str(data)]
    _main(*paths, "--output_dir", str(tmp_path / "boxes"), cwd=tmp_path)
    ckpt = tmp_path / "boxes" / "checkpoint.pth"
    assert ckpt.is_file()

    out = tmp_path / "panoptic"
    _main(*paths, "--masks", "--frozen_weights", str(ckpt), "--output_dir", str(out), cwd=tmp_path)
    summary = json.loads((out / "eval.json").read_text())
    for key in ("PQ_all", "PQ_th", "PQ_st"):
        assert set(summary[key]) == {"pq", "sq", "rq", "n"}
        assert 0.0 <= summary[key]["pq"] <= 1.0
    assert summary["PQ_all"]["n"] == 6 and summary["PQ_th"]["n"] == 3 and summary["PQ_st"]["n"] == 3
    assert "segm" in summary and "AP" in summary["segm"]
    predictions = json.loads((out / "panoptic_eval" / "predictions.json").read_text())
    assert len(predictions["annotations"]) == 4
    # stage 2 trained only the mask head: the DETR weights are the stage-1 ones
    stage1 = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
    stage2 = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)["model"]
    for k, v in stage1.items():
        assert torch.equal(stage2[f"detr.{k}"], v), k


def test_instance_segmentation(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "instances"
    _main("--dataset_file", "coco", "--coco_path", str(data), "--masks", "--output_dir", str(out), cwd=tmp_path)
    summary = json.loads((out / "eval.json").read_text())
    assert "AP" in summary["segm"] and "AP" in summary["bbox"]
    assert "PQ_all" not in summary
