"""tools/plot_logs.py: the fine-tuning fork's three figures from generated ``log.txt`` files (the
plotted lines are the logged numbers: train solid, validation dashed, one colour per run), the
precision-recall curves of a real pycocotools evaluation saved as main.py saves it, and the command
line run from another folder."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tools import plot_logs as pl

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("loss", "loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error_unscaled")


def _write_log(folder: Path, offset: float) -> list[dict]:
    """Six epochs, evaluated every other one (as with ``--eval_every 2``), distinct values per field."""
    folder.mkdir(parents=True)
    entries = []
    for epoch in range(6):
        e: dict = {"epoch": epoch, "n_parameters": 1000, "train_lr": 1e-4}
        e.update({f"train_{f}": offset + 10 * i + 3 - 0.25 * epoch for i, f in enumerate(FIELDS)})
        if epoch % 2 == 1:
            e.update({f"test_{f}": offset + 10 * i + 3.5 - 0.2 * epoch for i, f in enumerate(FIELDS)})
            e["test_coco_eval_bbox"] = [0.05 * epoch, 0.1 * epoch + offset / 100] + [0.0] * 10
        entries.append(e)
    (folder / "log.txt").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return entries


def _save_coco_eval(path: Path) -> None:
    """A real pycocotools evaluation, saved as main.py saves it (``torch.save(COCOeval.eval)``).
    Class 1: two ground-truth boxes, detections TP 0.9, FP 0.8, TP 0.7; class 2: one box, no
    detection; class 3: no ground truth (pycocotools: -1, left out of the class average)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "width": 100, "height": 100} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
        ],
        "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dets = np.array([[1, 10, 10, 30, 30, 0.9, 1], [1, 60, 5, 30, 30, 0.8, 1], [2, 50, 50, 30, 30, 0.7, 1]])
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ev.eval, path)


def _lines(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def test_fork_figures_plot_the_logged_numbers(tmp_path):
    logs = {"a": _write_log(tmp_path / "a", 0.0), "b": _write_log(tmp_path / "b", 1.0)}
    runs = [tmp_path / "a", tmp_path / "b" / "log.txt"]  # a folder or its log.txt
    panels = 0
    for fields in pl.FORK_FIGURES.values():
        fig = pl.plot_fields(runs, fields)
        for ax, field in zip(fig.axes, fields):
            lines = _lines(ax)
            assert set(lines) == ({"a val", "b val"} if field == "mAP" else {"a train", "a val", "b train", "b val"})
            for run, log in logs.items():
                val = [e for e in log if "test_loss" in e]
                if field == "mAP":
                    expected = {"val": ([e["epoch"] for e in val], [e["test_coco_eval_bbox"][1] for e in val])}
                else:
                    expected = {
                        "train": ([e["epoch"] for e in log], [e[f"train_{field}"] for e in log]),
                        "val": ([e["epoch"] for e in val], [e[f"test_{field}"] for e in val]),
                    }
                for split, (x, y) in expected.items():
                    line = lines[f"{run} {split}"]
                    assert list(line.get_xdata()) == x and list(line.get_ydata()) == y, (field, run, split)
                    assert line.get_linestyle() == ("-" if split == "train" else "--")
            colours = {label: line.get_color() for label, line in lines.items()}
            assert len({colours["a val"], colours["b val"]}) == 2  # one colour per run...
            assert field == "mAP" or colours["a train"] == colours["a val"]  # ...for both splits
            panels += 1
        fig.clf()
    assert panels == 7  # loss, mAP | loss_ce, loss_bbox, loss_giou | class_error, cardinality_error_unscaled


def test_precision_recall_of_a_saved_evaluation(tmp_path):
    _save_coco_eval(tmp_path / "run" / "eval" / "latest.pth")
    fig, axes = pl.plot_precision_recall([tmp_path / "run" / "eval" / "latest.pth"], naming_scheme="exp_id")
    recall = np.linspace(0, 1, 101)
    # class 1: precision 1 up to recall 0.5, then 2/3; class 2: 0; class 3 (no ground truth) left out
    precision = np.where(recall <= 0.5 + 1e-9, 0.5, 1 / 3)
    scores = np.where(recall <= 0.5 + 1e-9, 0.45, 0.35)  # class 1: 0.9, then 0.7; class 2: 0
    (pr,), (sc,) = axes[0].get_lines(), axes[1].get_lines()
    assert pr.get_label() == sc.get_label() == "run"
    np.testing.assert_allclose(pr.get_xdata(), recall)
    np.testing.assert_allclose(pr.get_ydata(), precision)
    np.testing.assert_allclose(sc.get_ydata(), scores)
    fig.clf()


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "log.txt").write_text('{"epoch": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"log.txt, line 2: not a JSON object"):
        pl.read_log(tmp_path)
    torch.save({"precision": torch.zeros(2)}, tmp_path / "latest.pth")
    with pytest.raises(ValueError, match=r"latest.pth: not a COCOeval.eval dict \(missing \['recall'"):
        pl.load_coco_eval(tmp_path / "latest.pth")
    torch.save({"precision": Path("x")}, tmp_path / "unsafe.pth")  # any other pickled object is refused
    with pytest.raises(ValueError, match=r"unsafe.pth: .*refusing to load \['pathlib"):
        pl.load_coco_eval(tmp_path / "unsafe.pth")


def test_command_line_from_another_folder(tmp_path):
    _write_log(tmp_path / "runs" / "a", 0.0)
    _save_coco_eval(tmp_path / "runs" / "a" / "eval" / "latest.pth")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "plot_logs.py"), "../runs/a", "--out", "summary.png"],
        cwd=elsewhere, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exp_id a: mAP@50=041.7" in proc.stdout  # mean over the 101 recall points of the curve above
    written = [Path("../runs/a") / f"{n}.png" for n in (*pl.FORK_FIGURES, "precision_recall")] + [Path("summary.png")]
    for path in written:
        assert f"wrote {path}\n" in proc.stdout
        with Image.open(elsewhere / path) as im:
            lo, hi = im.convert("L").getextrema()
            assert im.format == "PNG" and im.width > 400 and hi - lo > 100, path
    assert not list((tmp_path / "runs" / "a").glob(".*.tmp"))
