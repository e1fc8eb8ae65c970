"""datasets/coco_names.py against the category lists of real COCO files (``../shared/data``)."""

from __future__ import annotations

import json

import pytest
from golden import DATA_DIR

from datasets.coco_names import COCO_PANOPTIC_NAMES, COCO_STUFF_NAMES, COCO_THING_NAMES, coco_category_name


def _load(relative: str):
    path = DATA_DIR / relative
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text())


def test_thing_names_are_the_coco_detection_categories():
    categories = _load("tiny_coco/instances_train2017_small.json")["categories"]
    assert {c["id"]: c["name"] for c in categories} == COCO_THING_NAMES


def test_panoptic_names_are_the_coco_panoptic_categories():
    categories = _load("coco_panoptic_sample/panoptic_coco_categories.json")
    assert {c["id"]: c["name"] for c in categories} == COCO_PANOPTIC_NAMES
    assert set(COCO_STUFF_NAMES) == {c["id"] for c in categories if not c["isthing"]}


def test_unused_ids_get_a_readable_name():
    assert len(COCO_THING_NAMES) == 80 and len(COCO_STUFF_NAMES) == 53
    assert coco_category_name(12) == "class 12" and coco_category_name(18) == "dog"
