"""Checkpoints written by ``main.py`` before the redesign of its settings and checkpoints still load,
evaluate to the same numbers and resume.

The fixtures in ``tests/fixtures/compat/`` (a DETR and a Deformable DETR checkpoint after one epoch,
with their ``log.txt``, and ``expected.json``) were made by ``tests/fixtures/make_compat_checkpoints.py``
with the code of commit 8ce92af; see its docstring. Everything here goes through the command line
(``main.py`` in a subprocess, nothing of ``main`` imported), so the test holds whatever ``main.py``
becomes inside. The data set is the ``synthetic_coco`` fixture, the generator call the checkpoints
were trained on (its 3 categories fix the class count).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "compat"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
MODELS = ("detr", "deformable_detr")
RUNTIME = ["--device", "cpu", "--num_workers", "0", "--batch_size", "2"]  # as the fixtures were evaluated

# Same weights and data, so the numbers may differ only by float rounding (another CPU's kernels or
# thread split): about 1e-7 relative in a loss; a box AP moves only in steps, when a detection's
# rank or IoU crosses a threshold, which noise that small does not do here. 1e-5 allows that noise
# and catches any real change (a wrong weight, flag or image size moves the loss by far more).
AP_TOLERANCE = 1e-5
# --eval prints its mean loss with 4 decimals: rounding (5e-5) plus the same float noise.
PRINTED_LOSS_TOLERANCE = 5e-5 + 1e-5
# The resumed epoch trains 6 AdamW steps, which may amplify float noise. Measured on the fixtures:
# resuming without the AdamW moments moves the epoch's train_loss by 1.5-2.4% and test_loss by up
# to 6%, with another torch RNG state by 0.07-0.7%; 1e-4 relative still catches both.
RESUMED_RTOL = 1e-4


def run_main(argv: list[str]) -> subprocess.CompletedProcess:
    """``python main.py *argv`` from the repository root, as a user runs it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def printed_eval_loss(stdout: str) -> float:
    """The evaluation's mean loss from its ``Averaged stats: ... loss: median (mean) ...`` line."""
    found = re.findall(r"Averaged stats:.*?\bloss: [-\d.]+ \(([-\d.]+)\)", stdout)
    assert found, f"no 'Averaged stats: ... loss: x (mean)' line in main.py's output:\n{stdout[-3000:]}"
    return float(found[-1])


@pytest.mark.parametrize("model", MODELS)
def test_fixture_holds_plain_data(model):
    """The checkpoint loads with ``weights_only=True`` (tensors and plain Python values only) and is
    the one described: epoch 0 of this model, with optimizer and scheduler state; still small."""
    path = FIXTURES / model / "checkpoint.pth"
    assert path.stat().st_size < 2_000_000
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["args"]["model"] == model
    assert ckpt["args"]["backbone"] == "timm:test_efficientnet"
    assert {"model", "optimizer", "lr_scheduler"} <= set(ckpt)
    assert ckpt["model"] and all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())
    assert ckpt["optimizer"]["state"]  # AdamW's moments: the run can continue exactly
    (logged,) = read_log(FIXTURES / model / "log.txt")
    assert logged["epoch"] == 0 and logged["test_loss"] == EXPECTED["models"][model]["eval"]["test_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_eval_gives_recorded_numbers(model, synthetic_coco, tmp_path):
    """``--eval --resume`` with only the data and run-time flags (the checkpoint supplies the model's):
    the box AP and evaluation loss recorded when the checkpoint was made."""
    expected = EXPECTED["models"][model]["eval"]
    out = tmp_path / "eval"
    proc = run_main(
        ["--coco_path", str(synthetic_coco), "--eval", "--resume", str(FIXTURES / model / "checkpoint.pth"),
         "--output_dir", str(out), *RUNTIME]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bbox = json.loads((out / "eval.json").read_text())["bbox"]
    assert bbox.keys() == expected["bbox"].keys()
    for k, v in expected["bbox"].items():
        assert bbox[k] == pytest.approx(v, abs=AP_TOLERANCE), (k, bbox, expected["bbox"])
    loss = printed_eval_loss(proc.stdout)
    assert loss == pytest.approx(expected["test_loss"], abs=PRINTED_LOSS_TOLERANCE), (loss, expected)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_resume_continues_the_run(model, synthetic_coco, tmp_path):
    """``--resume`` of (a copy of) the run folder with ``--epochs 2`` trains and evaluates epoch 1,
    appended to the run's log.txt after its epoch 0, as the code that wrote the checkpoint does."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / model, run)  # never write into tests/fixtures
    (before,) = read_log(run / "log.txt")
    proc = run_main(
        ["--coco_path", str(synthetic_coco), "--resume", str(run / "checkpoint.pth"), "--output_dir", str(run),
         "--epochs", "2", *RUNTIME]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = read_log(run / "log.txt")
    assert [e["epoch"] for e in log] == [0, 1]
    assert log[0] == before  # epoch 0's line kept as it was
    assert math.isfinite(log[1]["train_loss"]) and math.isfinite(log[1]["test_loss"])
    # continued from the saved weights, AdamW moments and RNG state: the epoch the old code trained
    recorded = EXPECTED["models"][model]["resumed_epoch_1"]
    for k in ("train_loss", "test_loss"):
        assert log[1][k] == pytest.approx(recorded[k], rel=RESUMED_RTOL), (k, log[1][k], recorded[k])
