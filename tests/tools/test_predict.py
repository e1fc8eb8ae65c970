"""tools/predict.py on tiny checkpoints: COCO results and drawings for a folder with a broken file,
panoptic outputs, batching equal to one-by-one, and bad input stopped with one clear line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import write_image
from PIL import Image

from datasets.coco_names import COCO_THING_NAMES
from tools import predict
from tools.inference import collect_images, read_image


def run(*argv: str) -> None:
    predict.main([str(a) for a in argv])


def test_folder_with_a_broken_file(tiny_checkpoints, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    run("--checkpoint", tiny_checkpoints["detr"], image_folder, "--output", out, "--threshold", "0.0",
        "--batch_size", "2")  # fmt: skip
    text = capsys.readouterr().out
    assert "broken.jpg" in text and "skipped 1 of 4 file(s)" in text  # named and counted
    assert "ignored 1 file(s) without an image suffix" in text  # notes.txt, counted
    results = json.loads((out / "predictions.json").read_text())
    assert {r["file_name"] for r in results} == {str(image_folder / n) for n in ("000000000042.png", "b.png", "c.jpg")}
    assert {r["image_id"] for r in results} == {42, "b.png", "c.jpg"}  # COCO-style names give their number
    assert len(results) == 3 * 8  # threshold 0: every query of the 8-query model
    sizes = {"000000000042.png": (80, 60), "b.png": (64, 64), "c.jpg": (50, 90)}  # c.jpg: EXIF-rotated 90x50
    for r in results:
        w, h = sizes[Path(r["file_name"]).name]
        x, y, bw, bh = r["bbox"]
        assert 0 <= x + bw / 2 <= w + 0.01 and 0 <= y + bh / 2 <= h + 0.01 and bw >= 0 and bh >= 0  # centre inside
        assert 0.0 <= r["score"] <= 1.0 and r["category_id"] in range(5)
    drawn = sorted(p.name for p in out.glob("*.png"))
    assert drawn == ["000000000042.png", "b.png", "c.png"]
    for name in drawn:
        with Image.open(out / name) as img:
            assert max(img.size) >= 480  # small images are enlarged so that labels can be read
    assert not list(out.glob(".*.tmp"))


def test_output_folder_of_the_inputs_is_refused_and_ids_stay_distinct(tiny_checkpoints, tmp_path):
    """``photos/ --output photos/``: refused in one line, the inputs untouched. Elsewhere: ``1.png``
    and ``01.png`` get distinct image ids (their paths), ``holiday.jpg`` and ``holiday.png``
    distinct drawings."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(("1.png", "01.png", "holiday.jpg", "holiday.png", "000000000007.png")):
        write_image(photos / name, 64, 48, seed=i)
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    with pytest.raises(SystemExit) as e:
        run("--checkpoint", tiny_checkpoints["detr"], photos, "--output", photos)
    assert str(e.value).startswith(f"error: --output {photos} holds input images (")
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before

    out = tmp_path / "out"
    run("--checkpoint", tiny_checkpoints["detr"], photos, "--output", out, "--threshold", "0.0")
    ids = {r["file_name"]: r["image_id"] for r in json.loads((out / "predictions.json").read_text())}
    assert ids == {str(photos / "01.png"): str(photos / "01.png"), str(photos / "1.png"): str(photos / "1.png"),
                   str(photos / "holiday.jpg"): "holiday.jpg", str(photos / "holiday.png"): "holiday.png",
                   str(photos / "000000000007.png"): 7}  # fmt: skip
    assert sorted(p.name for p in out.glob("*.png")) == [
        "000000000007.png", "01.png", "1.png", "holiday.png", "holiday_2.png"
    ]  # fmt: skip


def test_checkpoint_urls_are_cached_apart_and_hostile_ones_refused(tiny_checkpoints, tmp_path, monkeypatch):
    """``--checkpoint https://a/checkpoint.pth`` then ``https://b/checkpoint.pth``: two downloads,
    two models (8 detections per image from DETR, 40 from Deformable DETR at threshold 0). A
    checkpoint that pickles ``os.system``: refused naming it, without torch's advice to load it
    with ``weights_only=False``."""
    from local_server import LocalServer

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    files = {f"/{k}/checkpoint.pth": tiny_checkpoints[v].read_bytes() for k, v in (("a", "detr"), ("b", "deformable"))}
    server = LocalServer(files)
    image = write_image(tmp_path / "street.png", 64, 48)
    try:
        for key, expected in (("a", 8), ("b", 40)):
            out = tmp_path / key
            run("--checkpoint", f"{server.url}/{key}/checkpoint.pth", image, "--output", out, "--threshold", "0.0",
                "--no_drawings")  # fmt: skip
            assert len(json.loads((out / "predictions.json").read_text())) == expected
    finally:
        server.close()
    assert server.requests == ["/a/checkpoint.pth", "/b/checkpoint.pth"]
    assert len(list((tmp_path / "hub").rglob("checkpoint.pth"))) == 2

    class Hostile:
        def __reduce__(self):
            return (os.system, ("echo hostile",))

    torch.save({"model": {}, "args": Hostile()}, tmp_path / "hostile.pth")
    with pytest.raises(SystemExit) as e:
        run("--checkpoint", tmp_path / "hostile.pth", image, "--output", tmp_path / "h")
    message = str(e.value)
    assert message.startswith(f"error: checkpoint {tmp_path / 'hostile.pth'} refused: it needs the Python object ")
    assert f"{os.system.__module__}.system" in message and "weights_only" not in message and "\n" not in message


def test_preprocessing_and_batching(tiny_checkpoints, tmp_path):
    """Batch 1: the results of the evaluation pipeline (validation transform of the checkpoint's
    sizes, model, post-processor at the original size). Batch 2 of equally sized images (no
    padding): the same results."""
    from datasets.coco import make_coco_transforms
    from models.loading import build_model_from_checkpoint

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        write_image(folder / f"{i}.png", 100, 70, seed=i)
    for batch in ("1", "2"):
        run("--checkpoint", tiny_checkpoints["deformable"], folder, "--output", tmp_path / batch, "--threshold", "0.0",
            "--batch_size", batch, "--no_drawings")  # fmt: skip
    one, two = (json.loads((tmp_path / b / "predictions.json").read_text()) for b in ("1", "2"))
    assert len(one) == len(two) == 2 * 8 * 5  # Deformable DETR keeps min(100, queries x classes) per image
    for a, b in zip(one, two):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["bbox"] == pytest.approx(b["bbox"], abs=0.02) and a["score"] == pytest.approx(b["score"], abs=1e-4)
    assert not list((tmp_path / "1").glob("*.png"))

    loaded = build_model_from_checkpoint(tiny_checkpoints["deformable"])
    image = Image.open(folder / "0.png").convert("RGB")
    x, _ = make_coco_transforms("val", max_size=96, val_size=64)(image, None)
    assert x.shape[-2:] == (64, 91)
    with torch.no_grad():
        expected = loaded.postprocessors["bbox"](loaded.model(x[None]), torch.tensor([[70, 100]]))[0]
    got = [r for r in one if r["image_id"] == 0]
    assert [r["score"] for r in got] == pytest.approx(expected["scores"].tolist(), abs=1e-5)
    x0, y0, x1, y1 = expected["boxes"][0].tolist()
    assert got[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.01)


def test_panoptic_outputs(tiny_checkpoints, image_folder, tmp_path):
    out = tmp_path / "out"
    run("--checkpoint", tiny_checkpoints["panoptic"], image_folder / "b.png", image_folder / "c.jpg", "--output", out,
        "--threshold", "0.0")  # fmt: skip
    panoptic = json.loads((out / "panoptic.json").read_text())
    assert [a["file_name"] for a in panoptic["annotations"]] == ["b.png", "c.png"]
    assert {c["id"]: (c["name"], c["isthing"]) for c in panoptic["categories"]}[3] == ("sky", 0)
    for ann, size in zip(panoptic["annotations"], [(64, 64), (50, 90)]):
        with Image.open(out / "panoptic" / ann["file_name"]) as png:
            assert png.size == size  # at the original (EXIF-rotated) size
        assert (out / f"{Path(ann['file_name']).stem}_panoptic.png").is_file()


def test_all_files_broken_fails_and_leaves_nothing(tiny_checkpoints, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"garbage")
    (folder / "b.png").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run("--checkpoint", tiny_checkpoints["detr"], folder, "--output", out)
    assert "none of the 2 input file(s) could be read" in str(e.value.code)
    assert not out.exists()


def test_bad_input_gives_one_clear_line(tiny_checkpoints, image_folder, tmp_path):
    not_a_checkpoint = tmp_path / "model.pth"
    not_a_checkpoint.write_text("hello")
    cases = [
        (["--checkpoint", not_a_checkpoint, image_folder], str(not_a_checkpoint)),
        (["--checkpoint", tmp_path / "missing.pth", image_folder], "missing.pth"),
        (["--checkpoint", tiny_checkpoints["detr"], tmp_path / "nowhere.jpg"], "nowhere.jpg"),
        (["--checkpoint", tiny_checkpoints["detr"], str(tmp_path / "*.webp")], "matches no file"),
        (["--hub", "detr_resnet5O", image_folder], "unknown entry 'detr_resnet5O'"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as e:
            run(*argv, "--output", tmp_path / "out")
        assert str(e.value.code).startswith("error: ") and expected in str(e.value.code), e.value.code
        assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_output_folder_not_writable(tiny_checkpoints, image_folder, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SystemExit) as e:
        run("--checkpoint", tiny_checkpoints["detr"], image_folder, "--output", locked / "out")
    assert "cannot be written" in str(e.value.code)


def test_output_path_is_a_file(tiny_checkpoints, image_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as e:
        run("--checkpoint", tiny_checkpoints["detr"], image_folder, "--output", blocker / "out")
    assert "cannot be written" in str(e.value.code) and str(blocker) in str(e.value.code)


def test_inputs_and_exif(tmp_path):
    write_image(tmp_path / "a.png", 20, 10)
    (tmp_path / "sub").mkdir()
    write_image(tmp_path / "sub" / "b.JPG", 20, 10)
    files, notes = collect_images([str(tmp_path), str(tmp_path / "**" / "*.JPG"), str(tmp_path / "a.png")])
    assert [f.name for f in files] == ["a.png", "b.JPG"] and not notes  # folder, glob, duplicate dropped
    img = Image.open(tmp_path / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "r.jpg").size == (10, 20)


def test_official_checkpoints_get_coco_names(tmp_path, capsys):
    """A checkpoint without names and with the 91 classes of the COCO models draws COCO names."""
    from tools.inference import class_names, hub_entries, load_detector

    assert "detr_resnet50" in hub_entries()
    torch.manual_seed(0)
    from conftest import tiny_args

    from models import build_model

    args = tiny_args("detr")
    args.num_classes = 91
    model, _, _ = build_model(args)
    path = tmp_path / "official.pth"
    torch.save({"model": model.state_dict(), "args": args}, path)  # an official-style checkpoint
    loaded = load_detector(str(path))
    names = class_names(loaded)
    assert names[1] == "person" and names[90] == "toothbrush"
    assert all(names[k] == v for k, v in COCO_THING_NAMES.items())
