"""The tiny run the end-to-end tests share: ResNet-18 from scratch, hidden 32, 1+2 layers, 8 queries,
64 px images, batch 4, on the CPU in the test process (seconds per epoch on the generated data), and
its DINO variant; ``train_resume_eval``: the end-to-end check of a run's resumption and evaluation."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "--backbone", "resnet18", "--backbone_weights", "none", "--train_backbone_all",
    "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "2",
    "--dim_feedforward", "64", "--num_queries", "8", "--batch_size", "4", "--num_workers", "0",
    "--train_scales", "64", "--val_size", "64", "--max_size", "64", "--device", "cpu", "--print_freq", "50",
]  # fmt: skip
# The tiny run's flags with a 2-level DINO (hidden 32: GroupNorm(32)), 10 queries, 6 denoising groups.
TINY_DINO = [
    *TINY, "--model", "dino", "--num_queries", "10", "--num_feature_levels", "2", "--attn_impl", "pytorch",
    "--dn_number", "3",
]  # fmt: skip


def train_resume_eval(common: list[str], coco_path: Path, tmp_path: Path) -> tuple[Path, list[dict]]:
    """``main.py *common`` for 2 epochs as a subprocess, then for 1 and ``--resume auto`` for 1 more
    in this process: the same weights and loss bit for bit; the checkpoint evaluated without its
    flags gives the run's last AP. Returns the 2-epoch run's folder and its log (one dict per epoch)."""
    import torch

    import main as main_module

    def run(argv: list[str]) -> None:
        main_module.main(main_module.get_args_parser().parse_args(argv))

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    full = tmp_path / "full"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *common, "--epochs", "2", "--output_dir", str(full)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = [json.loads(line) for line in (full / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1]

    part = tmp_path / "part"
    run([*common, "--epochs", "1", "--output_dir", str(part)])
    run([*common, "--epochs", "2", "--output_dir", str(part), "--resume", "auto"])
    a, b = (torch.load(d / "checkpoint.pth", weights_only=True) for d in (full, part))
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    logs = [(d / "log.txt").read_text().splitlines() for d in (full, part)]
    assert json.loads(logs[0][1])["train_loss"] == json.loads(logs[1][1])["train_loss"]

    run(["--coco_path", str(coco_path), "--device", "cpu", "--num_workers", "0", "--eval", "--resume",
         str(full / "checkpoint.pth"), "--output_dir", str(tmp_path / "ev")])  # fmt: skip
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["bbox"]["AP"] == log[-1]["test_coco_eval_bbox"][0]
    return full, log
