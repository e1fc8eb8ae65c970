"""``python -m datasets.check`` says what training does with odd boxes (issue 22 item 7): boxes
partly or wholly outside the image, with negative x, or without area are listed with what training
will do, and YOLO coordinates within float rounding of [0, 1] are clipped and counted, not fatal."""

from __future__ import annotations

from pathlib import Path

from data_faults import copy_coco, make_yolo, read_json, write_json

from datasets import check as check_module

TRAIN = Path("annotations") / "instances_train2017.json"


def test_boxes_training_clips_or_drops_are_listed(tmp_path: Path, synthetic_root: Path, capsys) -> None:
    coco = copy_coco(synthetic_root, tmp_path / "coco")
    data = read_json(coco / TRAIN)  # 64x64 images
    anns = data["annotations"]
    boxes = {0: [50, 10, 30, 10], 1: [-5, 10, 20, 20], 2: [10, 10, 0, 20], 3: [10, 10, 20, -1], 4: [70, 10, 5, 5]}
    for k, bbox in boxes.items():
        anns[k]["bbox"] = bbox
    write_json(coco / TRAIN, data)
    assert check_module.main(["--dataset_file", "coco", str(coco), "--check_images", "none"]) == 0
    out = capsys.readouterr().out
    ids = [a["id"] for a in anns]
    assert (
        "  - 2 box(es) with zero or negative width or height: training drops them "
        f"(annotation id {ids[2]}, annotation id {ids[3]})" in out
    )
    assert f"  - 1 box(es) entirely outside the image: training drops them (annotation id {ids[4]})" in out
    assert f"  - 1 box(es) with negative x or y: training clips them at 0 (annotation id {ids[1]})" in out
    assert (
        "  - 1 box(es) reaching past the image's right or bottom edge: training clips them to the image "
        f"(annotation id {ids[0]})" in out
    )
    assert "val: OK" in out and out.count("box(es)") == 4  # the validation split has none


def test_yolo_rounding_is_clipped_and_counted(tmp_path: Path, capsys) -> None:
    lines = ["0 0.5 0.5 1.0000001 0.2", "0 -0.0000004 0.5 0.1 0.2", "0 0.5 0.5 0.2 0.2"]
    root = make_yolo(tmp_path / "set", ["cat"], {"train": {"a": lines}, "val": {"b": ["0 0.95 0.5 0.2 0.2"]}})
    assert check_module.main(["--dataset_file", "yolo", str(root)]) == 0
    out = capsys.readouterr().out
    label = root / "labels" / "train" / "a.txt"
    assert (
        "2 label line(s) with a coordinate within 1e-06 outside [0, 1] (float rounding): clipped to [0, 1] "
        f"(first: {label}:1)" in out
    )
    assert (
        "  - 1 box(es) reaching past the image's right or bottom edge: training clips them to the image "
        f"({root / 'labels' / 'val' / 'b.txt'}:1)" in out
    )
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 1.00001 0.2\n")  # beyond rounding: still refused
    assert check_module.main(["--dataset_file", "yolo", str(root)]) == 1
    assert f"{label}:1: has a coordinate outside [0, 1]" in capsys.readouterr().out
