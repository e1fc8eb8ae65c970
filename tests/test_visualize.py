"""``tools.visualize``: predictions above the threshold only, readable labels, dashed ground truth,
upscaled tiles under a title; and ``tools.demo``'s whole-run ETA."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import main as main_module
from models import build_model
from tools.demo import Progress
from tools.visualize import COLOURS, GT_COLOUR, draw_detections, draw_predictions, tile_sheet
from util.checkpoint import save_checkpoint

NAMES = {1: "red rectangle", 2: "green ellipse"}


def test_tile_is_upscaled_with_solid_predictions_labels_and_dashed_ground_truth():
    image = Image.new("RGB", (96, 64), (0, 0, 0))
    boxes = torch.tensor([[10.0, 30.0, 50.0, 60.0]])
    tile = draw_detections(image, boxes, [1], [0.93], NAMES, gt_boxes=[[60, 8, 30, 40]], min_side=384)
    assert tile.size == (384, 256)  # scale 4
    px = np.asarray(tile)
    colour = np.array(COLOURS[1])
    assert (px[150:230, 41] == colour).all()  # the prediction's left edge (x = 40 * 4), solid
    label = px[100:120, 42:120]  # just above the box top (y = 120): the filled label background
    assert (label == colour).all(axis=-1).mean() > 0.4 and (label != colour).any()  # background + text
    top = px[32, 240:360]  # the ground truth's top edge (y = 8 * 4), dashed white
    white = (top == np.array(GT_COLOUR)).all(axis=-1)
    assert 0.3 < white.mean() < 0.7
    sheet = tile_sheet([tile, tile, tile], "title", columns=2)
    assert sheet.width > 2 * tile.width and sheet.height > 2 * tile.height


def test_draw_predictions_draws_only_scores_above_the_threshold(synthetic_coco, tmp_path):
    argv = ["--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim", "32", "--nheads", "2",
            "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "32", "--num_queries", "4",
            "--val_size", "64", "--max_size", "64", "--num_classes", "4", "--device", "cpu"]  # fmt: skip
    args = main_module.resolve_args(main_module.get_args_parser().parse_args(argv))
    torch.manual_seed(0)
    model = build_model(args)[0]
    ckpt = tmp_path / "checkpoint.pth"
    save_checkpoint({"model": model.state_dict(), "args": vars(args)}, ckpt)
    ann = synthetic_coco / "annotations" / "instances_val2017.json"
    drawn = {}
    for threshold in (0.0, 1.01):
        out = draw_predictions(ckpt, synthetic_coco / "val2017", ann, tmp_path / f"p{threshold}.png", 1, threshold)
        drawn[threshold] = np.asarray(Image.open(out).convert("RGB"))
    assert drawn[0.0].shape == drawn[1.01].shape and drawn[0.0].shape[1] > 384  # the 64-px image upscaled x6
    palette = np.array(COLOURS)
    counts = {t: (a[..., None, :] == palette).all(-1).any(-1).sum() for t, a in drawn.items()}
    assert counts[0.0] > 1000 and counts[1.01] == 0  # a score >= 1.01 does not exist: boxes only above it
    assert not list(tmp_path.glob("*.tmp.png"))


def test_progress_eta_covers_the_remaining_epochs_and_evaluations():
    p = Progress(epochs=2, start=0.0, tail_seconds=0.0)
    assert "ETA follows" in p.update("Epoch: [0]  [ 0/10]  eta: 0:00:09", 1.0)
    line = p.update("Epoch: [0]  [ 9/10]  eta: 0:00:00", 10.0)  # 1 s per iteration
    assert "about 0:00:" in line and p.iters_done == 9
    # 10 more iterations + 2 evaluations guessed at 20 iterations each (none seen yet)
    assert line.endswith("about 0:00:50 left")
    line = p.update("Epoch: [1]  [ 0/10]  eta: 0:00:09", 16.0)  # 5 s evaluation + 1 iteration
    assert p.eval_seconds == [5.0] and line.endswith("about 0:00:14 left")  # 9 iterations + 1 evaluation
    assert p.update("Test:  [0/2]", 17.0) is None
