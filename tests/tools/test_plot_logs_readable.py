"""tools/plot_logs.py on short runs and several runs (issue 22 item 8): a one-epoch run's points are
drawn (markers), and runs get colours a reader tells apart, in the summary and precision-recall figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.colors import rgb_to_hsv, to_rgb

from tools import plot_logs as pl


def _one_epoch_run(folder: Path, offset: float) -> Path:
    folder.mkdir(parents=True)
    entry = {"epoch": 0, "train_loss": 3.0 + offset, "test_loss": 3.5 + offset,
             "test_coco_eval_bbox": [0.1, 0.2] + [0.0] * 10,
             **{f"train_{t}_unscaled": 1.0 + offset for t in ("loss_ce", "loss_bbox", "loss_giou")}}  # fmt: skip
    (folder / "log.txt").write_text(json.dumps(entry) + "\n")
    return folder


def _min_hue_gap(colours: list) -> float:
    """The smallest difference of hue (on the colour circle, 0..0.5) between two of ``colours``."""
    hues = [rgb_to_hsv(to_rgb(c))[0] for c in colours]
    return min(min(abs(a - b), 1 - abs(a - b)) for i, a in enumerate(hues) for b in hues[i + 1 :])


def test_one_epoch_runs_are_drawn_in_distinct_colours(tmp_path):
    runs = [_one_epoch_run(tmp_path / f"run{i}", 0.1 * i) for i in range(3)]
    fig = pl.summary_figure(runs)
    for ax in fig.axes:
        lines = ax.get_lines()
        assert lines and all(line.get_marker() not in (None, "None", "") for line in lines), ax.get_title()
    # one colour per run, the same in every panel
    colours = {line.get_label().split()[0]: line.get_color() for line in fig.axes[0].get_lines()}
    assert sorted(colours) == ["run0", "run1", "run2"] and _min_hue_gap(list(colours.values())) > 0.1


def test_precision_recall_runs_are_distinguishable(tmp_path, monkeypatch):
    curve = {"recall": np.linspace(0, 1, 101), "precision": np.linspace(1, 0, 101), "scores": np.ones(101),
             "mAP50": 0.5, "recall_at_50": 0.5}  # fmt: skip
    monkeypatch.setattr(pl, "load_coco_eval", lambda path: None)
    monkeypatch.setattr(pl, "precision_recall_curves", lambda data: curve)
    fig, axes = pl.plot_precision_recall([tmp_path / f"{i}.pth" for i in range(3)])
    assert _min_hue_gap([line.get_color() for line in axes[0].get_lines()]) > 0.1  # the official blues: < 0.02
