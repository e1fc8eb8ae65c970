"""``util.panoptic``: the one implementation of the panoptic PNG id encoding, used everywhere."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import datasets.coco_panoptic
import datasets.panoptic_eval
import datasets.synthetic_panoptic
import models.segmentation
from util.panoptic import MAX_SEGMENT_ID, id2rgb, read_panoptic_png, rgb2id


def test_round_trip_and_edge_cases(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 4001, MAX_SEGMENT_ID]], dtype=np.int64)
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert rgb[0, 3].tolist() == [0, 1, 0] and rgb[1, 1].tolist() == [0, 0, 1]
    assert np.array_equal(rgb2id(rgb), ids)
    rgba = np.concatenate([rgb, np.full((2, 4, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(rgb2id(rgba), ids)  # alpha ignored (one copy used to mis-read 4 channels)
    assert np.array_equal(rgb2id(ids), ids)  # ids already
    with pytest.raises(ValueError, match="segment ids must lie in"):
        id2rgb(np.array([MAX_SEGMENT_ID + 1]))
    with pytest.raises(ValueError, match="rgb2id expects"):
        rgb2id(np.zeros((2, 2, 2)))
    path = tmp_path / "pan.png"
    PIL.Image.fromarray(rgb).save(path)
    buf = io.BytesIO()
    PIL.Image.fromarray(rgba).save(buf, format="PNG")
    for source in (path, str(path), path.read_bytes(), PIL.Image.open(path), buf.getvalue()):
        assert np.array_equal(read_panoptic_png(source), ids)


def test_every_module_uses_the_same_functions() -> None:
    assert models.segmentation.rgb2id is datasets.coco_panoptic.rgb2id is datasets.panoptic_eval.rgb2id is rgb2id
    assert models.segmentation.id2rgb is datasets.synthetic_panoptic.id2rgb is id2rgb
