"""``main.py --model deformable_detr`` end to end through the command line: train one epoch of a
tiny multi-scale Deformable DETR on a generated COCO-layout data set, check the checkpoint, log
and evaluation summary, then evaluate the checkpoint with ``--eval --resume``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

TINY_DEFORMABLE = [
    "--model", "deformable_detr", "--backbone", "resnet18", "--backbone_weights", "none", "--train_backbone_all",
    "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "64",
    "--num_queries", "10", "--num_feature_levels", "2", "--batch_size", "2", "--num_workers", "0",
    "--train_scales", "64", "--val_size", "64", "--max_size", "64", "--device", "cpu", "--print_freq", "50",
    "--attn_impl", "pytorch",
]  # fmt: skip


def run_main(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_deformable_train_then_eval_command_line(synthetic_coco, tmp_path):
    out = tmp_path / "run"
    proc = run_main([*TINY_DEFORMABLE, "--coco_path", str(synthetic_coco), "--output_dir", str(out), "--epochs", "1"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "using the 'pytorch' implementation" in proc.stdout
    for name in ("checkpoint.pth", "log.txt", "eval.json"):
        assert (out / name).is_file(), name
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0] and "train_loss_ce" in log[0]
    summary = json.loads((out / "eval.json").read_text())
    assert {"AP", "AP50", "AR100"} <= set(summary["bbox"])
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert "class_embed.0.bias" in ckpt["model"] and "input_proj.1.0.weight" in ckpt["model"]
    assert "input_proj.2.0.weight" not in ckpt["model"]  # two levels: layer3 and layer4

    proc = run_main(
        [*TINY_DEFORMABLE, "--coco_path", str(synthetic_coco), "--eval", "--resume", str(out / "checkpoint.pth"),
         "--output_dir", str(tmp_path / "eval")]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["bbox"] == summary["bbox"]  # same weights, same data: same numbers
