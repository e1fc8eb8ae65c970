"""main.py offline, every weight from a checkpoint: ``--finetune`` attempts no ImageNet download
(and warns when the data's images are much smaller than the training scales), ``--frozen_weights``
takes the box model's architecture from its checkpoint (the panoptic stage 2 with a non-default
architecture) and refuses a change of it. Offline: an empty TORCH_HOME and every proxy pointing to a
closed port, so that any download fails."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main as main_module
from datasets.synthetic_panoptic import generate_synthetic_panoptic
from models import build_model
from util import config
from util.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# the run's own settings; the architecture (TINY's) comes from the checkpoint
# TINY's architecture, without its --backbone_weights none: the default, torchvision's ImageNet
# weights, is what must not be downloaded
ARCH = ["--backbone", "resnet18", "--train_backbone_all", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1",
        "--dec_layers", "2", "--dim_feedforward", "64", "--num_queries", "8"]  # fmt: skip
RUN = ["--num_workers", "0", "--epochs", "1", "--device", "cpu", "--print_freq", "100", "--val_size", "64"]


def _checkpoint(path: Path, *flags: str) -> Path:
    """A checkpoint as ``main.py`` saves it, of a model built with ``flags`` (random weights)."""
    torch.manual_seed(0)
    args = config.resolve(config.get_args_parser().parse_args([*flags, "--backbone_weights", "none"]))
    model, _, _ = build_model(args)
    save_checkpoint({"model": model.state_dict(), "args": config.saved(args)}, path)
    return path


def _offline_main(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    (tmp_path / "torch_home").mkdir()
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), "OMP_NUM_THREADS": "2", "no_proxy": "",
           **dict.fromkeys(("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"), closed)}  # fmt: skip
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *argv], cwd=tmp_path, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_finetune_offline_warns_about_small_images(synthetic_coco, tmp_path):
    """Fine-tuning a checkpoint on 64 px images at the training scale 128: no download attempted
    (before, ``could not download ImageNet weights for resnet18``), and one warning line with the
    images' sizes and the flags that fit them."""
    ckpt = _checkpoint(tmp_path / "trained.pth", *ARCH, "--num_classes", "4")
    proc = _offline_main(["--coco_path", str(synthetic_coco), "--finetune", str(ckpt), "--output_dir", "run",
                          "--train_scales", "128", "--max_size", "160", "--batch_size", "4", *RUN], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list((tmp_path / "torch_home").rglob("*"))  # nothing downloaded, nothing attempted
    warnings = [line for line in proc.stdout.splitlines() if "much smaller" in line]
    assert warnings == [
        "warning: the training images are much smaller than --train_scales 128..128 (--max_size 160): shorter sides "
        "64-64 px (median 64), upscaled 2.0-2.0x, which costs time and adds no detail; for images this size pass "
        "--train_scales 38 51 64 --val_size 64 --max_size 64"
    ]
    saved = torch.load(tmp_path / "run" / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert saved["args"]["backbone"] == "resnet18" and saved["args"]["hidden_dim"] == 32


@pytest.fixture(scope="module")
def panoptic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_panoptic")
    generate_synthetic_panoptic(root, num_train=4, num_val=2, image_size=64, seed=0, verbose=False)
    return root


PANOPTIC_ARCH = ["--backbone", "resnet18", "--train_backbone_all", "--hidden_dim", "32", "--nheads", "8",
                 "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "64", "--num_queries", "10",
                 "--num_classes", "7"]  # fmt: skip


@pytest.mark.slow
def test_frozen_weights_take_the_architecture_of_their_checkpoint(panoptic_data, tmp_path):
    """The README's panoptic stage 2, ``--frozen_weights stage1.pth --masks``, of a non-default box
    model without repeating its flags, offline: it trains the mask head on the frozen box model
    (before: hundreds of missing keys and shape mismatches)."""
    stage1 = _checkpoint(tmp_path / "stage1.pth", *PANOPTIC_ARCH)
    data = ["--dataset_file", "coco_panoptic", "--coco_path", str(panoptic_data),
            "--coco_panoptic_path", str(panoptic_data)]  # fmt: skip
    proc = _offline_main([*data, "--masks", "--frozen_weights", str(stage1), "--output_dir", "stage2",
                          "--batch_size", "2", "--train_scales", "64", "--max_size", "64", *RUN], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list((tmp_path / "torch_home").rglob("*"))
    stage2 = torch.load(tmp_path / "stage2" / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert stage2["args"]["hidden_dim"] == 32 and stage2["args"]["masks"] is True
    for k, v in torch.load(stage1, map_location="cpu", weights_only=True)["model"].items():
        assert torch.equal(stage2["model"][f"detr.{k}"], v), k
    assert "PQ_all" in json.loads((tmp_path / "stage2" / "eval.json").read_text())


def test_frozen_weights_refuse_another_architecture(tmp_path):
    stage1 = _checkpoint(tmp_path / "stage1.pth", *PANOPTIC_ARCH)
    argv = ["--masks", "--frozen_weights", str(stage1), "--hidden_dim", "64", "--device", "cpu"]
    with pytest.raises(SystemExit) as e:
        main_module.main(main_module.get_args_parser().parse_args(argv))
    assert str(e.value.code) == (
        f"error: --frozen_weights {stage1} fixes the box model's architecture: drop --hidden_dim 64 "
        "(the checkpoint has 32)"
    )
