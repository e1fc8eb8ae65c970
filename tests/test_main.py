"""main.py end to end: train then evaluate through the real command line, exact resumption,
bad input stopped with clear messages before training, non-finite loss handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main as main_module
from util.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "--backbone", "resnet18", "--backbone_weights", "none", "--train_backbone_all",
    "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "2",
    "--dim_feedforward", "64", "--num_queries", "8", "--batch_size", "4", "--num_workers", "0",
    "--train_scales", "64", "--val_size", "64", "--max_size", "64", "--device", "cpu", "--print_freq", "50",
]  # fmt: skip


def parse(argv: list[str]):
    return main_module.get_args_parser().parse_args(argv)


def run_main_subprocess(argv: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *argv], cwd=ROOT, env=env, capture_output=True, text=True, **kw
    )


@pytest.mark.slow
def test_train_then_eval_command_line(synthetic_coco, tmp_path):
    out = tmp_path / "run"
    proc = run_main_subprocess(
        [*TINY, "--coco_path", str(synthetic_coco), "--output_dir", str(out), "--epochs", "2", "--lr_drop", "1"]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "num_classes = 4 (from max category id" in proc.stdout
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1]
    assert len(log[-1]["test_coco_eval_bbox"]) == 12 and "train_loss" in log[0]
    summary = json.loads((out / "eval.json").read_text())
    assert {"AP", "AP50", "AR100"} <= set(summary["bbox"]) and summary["epoch"] == 1
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and {"model", "optimizer", "lr_scheduler", "rng", "args"} <= set(ckpt)
    assert (out / "checkpoint0000.pth").is_file()  # extra checkpoint before the LR drop, as officially

    proc = run_main_subprocess(
        [*TINY, "--coco_path", str(synthetic_coco), "--eval", "--resume", str(out / "checkpoint.pth"),
         "--output_dir", str(tmp_path / "eval")]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "num_classes = 4 (from checkpoint" in proc.stdout
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["bbox"] == summary["bbox"]  # same weights, same data: same numbers


def _state_of(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_resume_is_exact(synthetic_coco, tmp_path):
    """2 epochs in one go == 1 epoch + resume for 1 more (weights, optimizer, scheduler, RNG)."""
    common = [*TINY, "--coco_path", str(synthetic_coco), "--lr_drop", "1", "--eval_every", "5"]
    main_module.main(parse([*common, "--epochs", "2", "--output_dir", str(tmp_path / "full")]))
    main_module.main(parse([*common, "--epochs", "1", "--output_dir", str(tmp_path / "part")]))
    main_module.main(
        parse([*common, "--epochs", "2", "--output_dir", str(tmp_path / "part"),
               "--resume", str(tmp_path / "part" / "checkpoint.pth")])
    )  # fmt: skip
    full, part = _state_of(tmp_path / "full" / "checkpoint.pth"), _state_of(tmp_path / "part" / "checkpoint.pth")
    assert full["epoch"] == part["epoch"] == 1
    for k, v in full["model"].items():
        assert torch.equal(v, part["model"][k]), k
    for a, b in zip(full["optimizer"]["state"].values(), part["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["lr_scheduler"] == part["lr_scheduler"]
    logs = [(tmp_path / d / "log.txt").read_text().splitlines() for d in ("full", "part")]
    assert json.loads(logs[0][1])["train_loss"] == json.loads(logs[1][1])["train_loss"]


def _expect_exit(argv: list[str], *patterns: str) -> str:
    with pytest.raises(SystemExit) as e:
        main_module.main(parse(argv))
    msg = str(e.value.code)
    for p in patterns:
        assert p in msg, msg
    return msg


def test_bad_input_is_reported_before_training(synthetic_coco, tmp_path):
    _expect_exit([*TINY, "--coco_path", str(tmp_path / "nowhere")], "nowhere", "does not exist")

    not_json = tmp_path / "notjson"
    (not_json / "annotations").mkdir(parents=True)
    (not_json / "val2017").mkdir()
    (not_json / "annotations" / "instances_val2017.json").write_text("this is not json")
    _expect_exit([*TINY, "--coco_path", str(not_json), "--eval"], "instances_val2017.json")

    # the first file read (val) has category ids up to 3: named with the annotation id
    _expect_exit(
        [*TINY, "--coco_path", str(synthetic_coco), "--num_classes", "2"],
        "instances_val2017.json",
        "annotation id",
        "num_classes=2",
    )
    _expect_exit([*TINY, "--coco_path", str(synthetic_coco), "--hidden_dim", "30", "--nheads", "4"], "--hidden_dim")

    # a checkpoint of another configuration: the error names the file and the mismatched keys
    other = tmp_path / "other.pth"
    save_checkpoint({"model": {"transformer.foo": torch.zeros(1)}, "epoch": 0}, other)
    _expect_exit(
        [*TINY, "--coco_path", str(synthetic_coco), "--num_classes", "4", "--eval", "--resume", str(other)],
        "other.pth",
        "does not fit",
        "transformer.foo",
    )


def test_non_finite_loss_saves_last_good_state(synthetic_coco, tmp_path, monkeypatch):
    import engine

    real = engine.train_one_epoch

    def poisoned(model, criterion, *a, **k):
        weight_dict = dict(criterion.weight_dict)
        orig_forward = criterion.forward
        criterion.forward = lambda o, t: {**orig_forward(o, t), "loss_bbox": torch.tensor(float("nan"))}
        try:
            return real(model, criterion, *a, **k)
        finally:
            criterion.forward = orig_forward
            criterion.weight_dict = weight_dict

    monkeypatch.setattr(main_module, "train_one_epoch", poisoned)
    out = tmp_path / "nan"
    msg = _expect_exit([*TINY, "--coco_path", str(synthetic_coco), "--epochs", "1", "--output_dir", str(out)])
    assert "non-finite values at epoch 0, iteration 0: loss term(s) loss_bbox" in msg and "images [" in msg
    saved = torch.load(out / "checkpoint_nonfinite.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
