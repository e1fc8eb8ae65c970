"""Tiny checkpoints for the tools' tests: DETR, panoptic DETR and Deformable DETR with random
weights, saved as ``main.py`` saves them (``model``, ``args`` as plain flags, ``id2label``, and the
thing/stuff map for panoptic), and a folder of small images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import build_model
from util import config
from util.checkpoint import save_checkpoint

TINY_FLAGS = [
    "--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim", "32", "--nheads", "2",
    "--enc_layers", "1", "--dec_layers", "2", "--dim_feedforward", "64", "--num_queries", "8", "--num_classes", "5",
    "--val_size", "64", "--max_size", "96", "--device", "cpu",
]  # fmt: skip
VARIANTS = {
    "detr": ["--model", "detr"],
    "panoptic": ["--model", "detr", "--masks", "--nheads", "8"],
    "deformable": ["--model", "deformable_detr", "--num_feature_levels", "2", "--dec_n_points", "2",
                   "--enc_n_points", "2", "--with_box_refine"],
}  # fmt: skip
# A tiny DINO (not among VARIANTS, whose checkpoints every tool test shares)
DINO_FLAGS = ["--model", "dino", "--num_feature_levels", "2", "--dec_n_points", "2", "--enc_n_points", "2",
              "--dn_number", "2"]  # fmt: skip
ID2LABEL = {1: "square", 2: "disc", 3: "sky", 4: "grass"}


def tiny_args(variant: str):
    return config.resolve(config.get_args_parser().parse_args([*TINY_FLAGS, *VARIANTS[variant]]))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"detr", "panoptic", "deformable"}`` -> checkpoint path (random weights, fixed seed)."""
    folder = tmp_path_factory.mktemp("tiny_checkpoints")
    paths = {}
    for i, variant in enumerate(VARIANTS):
        torch.manual_seed(i)
        args = tiny_args(variant)
        model, _, _ = build_model(args)
        ckpt = {"model": model.state_dict(), "args": config.saved(args), "id2label": ID2LABEL}
        if variant == "panoptic":
            ckpt["is_thing_map"] = {i: i in (1, 2) for i in range(5)}
        paths[variant] = folder / f"{variant}.pth"
        save_checkpoint(ckpt, paths[variant])
    return paths


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A small picture: a light square and a dark disc on a noisy background."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    img[height // 5 : height // 2, width // 5 : width // 2] = (230, 60, 60)
    y, x = np.mgrid[0:height, 0:width]
    img[(x - 0.7 * width) ** 2 + (y - 0.65 * height) ** 2 < (0.15 * min(width, height)) ** 2] = (60, 200, 80)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three readable images of different sizes (one a JPEG with an EXIF rotation), one broken
    file with an image suffix, and a text file."""
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "000000000042.png", 80, 60, seed=1)
    write_image(folder / "b.png", 64, 64, seed=2)
    rotated = Image.open(write_image(folder / "c_tmp.png", 90, 50, seed=3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    rotated.save(folder / "c.jpg", exif=exif.tobytes())
    (folder / "c_tmp.png").unlink()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image")
    return folder
