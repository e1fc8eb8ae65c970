"""main.py for a new user (issue 22 items 6 and 8): a bad --backbone refused before the data are
read; on a short fine-tune, the EMA warm-up sized to the run and said in the log, and a weights-only
checkpoint resumed with one line saying the optimizer starts fresh."""

from __future__ import annotations

import pytest
import torch
from test_main import run_main_subprocess
from tiny import TINY


@pytest.mark.slow
def test_short_run_ema_and_weights_only_resume(synthetic_coco, tmp_path):
    out = tmp_path / "run"
    data = ["--coco_path", str(synthetic_coco), "--output_dir", str(out)]
    proc = run_main_subprocess([*TINY, *data, "--epochs", "1", "--ema"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 12 images in batches of 4: 3 optimizer steps, a warm-up of 0.75 steps instead of 2000
    assert "EMA: decay 0.9997, warm-up tau 0.75 steps, a quarter of this run's 3 optimizer steps" in proc.stdout
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    gap = max((ckpt["model"][k] - v).abs().max().item() for k, v in ckpt["model_ema"]["model"].items()
              if v.is_floating_point())  # fmt: skip
    assert gap > 1e-4  # with the 2000-step ramp the average was the weights to 4e-7

    proc = run_main_subprocess([*data, "--resume", str(out / "checkpoint_best.pth"), "--epochs", "2",
                                "--num_workers", "0", "--device", "cpu"])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fresh = [line for line in proc.stdout.splitlines() if "start fresh" in line]
    assert fresh == [
        f"warning: {out / 'checkpoint_best.pth'} holds weights only (no optimizer state): the optimizer and "
        "learning-rate schedule start fresh from this run's settings"
    ]


def test_bad_backbone_refused_before_the_data(tmp_path):
    proc = run_main_subprocess(["--backbone", "resnet51", "--coco_path", str(tmp_path / "nowhere"), "--device", "cpu"])
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --backbone: unknown 'resnet51', choose from ['resnet101', 'resnet152', 'resnet18', 'resnet34', 'resnet50']"
    )
    assert "data:" not in proc.stdout and "nowhere" not in proc.stderr
