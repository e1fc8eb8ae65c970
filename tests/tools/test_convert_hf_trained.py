"""Trained here, used in transformers (issue 22): ``main.py`` trains a tiny DETR and a tiny Deformable
DETR on COCO-format data with 1-based category ids and gaps, ``tools/convert_hf.py --to-hf`` exports
each checkpoint, and transformers 5 (``from_pretrained``, ``AutoImageProcessor``, the
``object-detection`` pipeline) finds the same boxes, scores and classes as ``tools/predict.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_image
from tiny import TINY

from tools import convert_hf, predict

transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")  # the exported backbone is a timm ResNet, as in the hub's checkpoints

ROOT = Path(__file__).resolve().parents[2]
GAPPED = {1: 1, 2: 4, 3: 7}  # the generated set's category ids -> 1-based ids with gaps (num_classes 8)
MODELS = {
    "detr": ("DetrForObjectDetection", ["--model", "detr"]),
    "deformable_detr": ("DeformableDetrForObjectDetection",
                        ["--model", "deformable_detr", "--num_feature_levels", "2", "--enc_n_points", "2",
                         "--dec_n_points", "2", "--attn_impl", "pytorch"]),
}  # fmt: skip


def _train(*argv: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"main.py: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def gapped_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated COCO-layout set (8 train / 4 val images of 64 px) with category ids 1, 4, 7."""
    from datasets.synthetic import generate_synthetic_coco

    out = tmp_path_factory.mktemp("gapped_coco")
    generate_synthetic_coco(out, num_train=8, num_val=4, image_size=64, seed=0, verbose=False)
    for split in ("train", "val"):
        path = out / "annotations" / f"instances_{split}2017.json"
        data = json.loads(path.read_text())
        for item in data["categories"]:
            item["id"] = GAPPED[item["id"]]
        for ann in data["annotations"]:
            ann["category_id"] = GAPPED[ann["category_id"]]
        path.write_text(json.dumps(data))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two pictures: one at the model's size (64 px), one resized to 48x64 by both sides."""

    folder = tmp_path_factory.mktemp("photos")
    write_image(folder / "a.png", 64, 64, seed=1)
    write_image(folder / "b.png", 128, 96, seed=2)
    return folder


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request: pytest.FixtureRequest, gapped_coco: Path, images: Path, tmp_path_factory: pytest.TempPathFactory):
    """One training run per model, its export and tools/predict.py's predictions."""
    model = request.param
    work = tmp_path_factory.mktemp(f"trained_{model}")
    _train(*TINY, *MODELS[model][1], "--coco_path", str(gapped_coco), "--output_dir", str(work / "run"),
         "--epochs", "1")  # fmt: skip
    checkpoint = work / "run" / "checkpoint.pth"
    # the tools' command lines, run in this process (one interpreter start-up less each)
    assert convert_hf.main(["--to-hf", str(checkpoint), "--output", str(work / "hf")]) == 0
    argv = ["--checkpoint", str(checkpoint), str(images), "--output", str(work / "preds"), "--json_threshold", "0"]
    assert predict.main([*argv, "--no_drawings"]) == 0
    predictions = json.loads((work / "preds" / "predictions.json").read_text())
    return model, work / "hf", predictions, torch.load(checkpoint, weights_only=False)["id2label"]


def _detections(predictions: list[dict], names: dict[str, str]) -> dict[str, list[tuple[float, str, list[float]]]]:
    """predictions.json -> per file name ``(score, class name, [x0, y0, x1, y1])``."""
    out: dict[str, list] = {}
    for p in predictions:
        x, y, w, h = p["bbox"]
        out.setdefault(Path(p["file_name"]).name, []).append(
            (p["score"], names[str(p["category_id"])], [x, y, x + w, y + h])
        )
    return out


def _unmatched(ours: list, theirs: list, score_tol: float, box_tol: float) -> list:
    """The detections of either list with no partner in the other (same class, score and box
    within the tolerances, one to one): order-free, so near-equal scores cannot swap pairs."""
    left = list(ours)
    alone = []
    for score, name, box in theirs:
        j = next((j for j, (s, n, b) in enumerate(left) if n == name and abs(s - score) <= score_tol
                  and max(abs(u - v) for u, v in zip(b, box)) <= box_tol), None)  # fmt: skip
        if j is None:
            alone.append((score, name, box))
        else:
            left.pop(j)
    return alone + left


@pytest.mark.slow
def test_same_detections_in_transformers(trained, images: Path) -> None:
    from PIL import Image

    model, folder, predictions, id2label = trained
    assert sorted(id2label) == [1, 4, 7]
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {str(i): id2label.get(i, "N/A") for i in range(8)}
    hf_cls = getattr(transformers, MODELS[model][0])
    hf, info = hf_cls.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert processor.size.shortest_edge == 64 and processor.size.longest_edge == 64  # the run's --val_size/--max_size
    ours = _detections(predictions, config["id2label"])
    pipe = transformers.pipeline("object-detection", model=str(folder), device="cpu")
    for path in sorted(images.iterdir()):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            outputs = hf.eval()(**processor(images=image, return_tensors="pt"))
        result = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[image.size[::-1]])[0]
        theirs = [(s, config["id2label"][str(c)], b) for s, c, b in
                  zip(result["scores"].tolist(), result["labels"].tolist(), result["boxes"].tolist())]  # fmt: skip
        assert len(theirs) == len(ours[path.name]) > 0
        # predictions.json rounds scores to 5 decimals and boxes to 0.01 px
        assert not _unmatched(ours[path.name], theirs, score_tol=1e-4, box_tol=0.02), path.name
        found = [(d["score"], d["label"], [d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")])
                 for d in pipe(image, threshold=0.0)]  # fmt: skip
        assert not _unmatched(ours[path.name], found, score_tol=1e-4, box_tol=1.01), path.name  # whole pixels
