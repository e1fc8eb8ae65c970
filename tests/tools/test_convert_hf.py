"""``tools/convert_hf.py``: both directions through the command line, the written files, and a
one-line error with exit status 1 for a folder that is not a transformers checkpoint."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from models.hf_convert import build_model_from_args
from tools.convert_hf import main

ROOT = Path(__file__).resolve().parents[2]
ARCH = {"model": "detr", "backbone": "resnet18", "dilation": False, "position_embedding": "sine", "hidden_dim": 32,
        "nheads": 8, "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 32, "dropout": 0.1, "num_queries": 4,
        "num_classes": 3, "masks": False, "pre_norm": False, "num_feature_levels": 4, "dec_n_points": 4,
        "enc_n_points": 4, "with_box_refine": False, "two_stage": False}  # fmt: skip


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ours") / "model.pth"
    names = {0: "N/A", 1: "cat", 2: "dog"}
    torch.save({"model": build_model_from_args(ARCH).state_dict(), "args": ARCH, "id2label": names}, path)
    return path


def test_both_directions(ours: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    backbone_format = "transformers"  # transformers' own ResNet: no timm needed to load the folder
    assert main(["--to-hf", str(ours), "--output", str(tmp_path / "hf"), "--backbone-format", backbone_format]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["DetrForObjectDetection"] and config["backbone_config"]["model_type"] == "resnet"
    assert config["id2label"] == {"0": "N/A", "1": "cat", "2": "dog"}
    assert (tmp_path / "hf" / "preprocessor_config.json").is_file()
    assert main(["--from-hf", str(tmp_path / "hf"), "--output", str(tmp_path / "back.pth")]) == 0
    assert "wrote" in capsys.readouterr().out
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    original = torch.load(ours, weights_only=True)
    assert {k: back["args"][k] for k in ARCH} == ARCH and back["id2label"] == original["id2label"]
    assert back["model"].keys() == original["model"].keys()
    assert all(torch.equal(back["model"][k], v) for k, v in original["model"].items())
    # a transformers folder is a checkpoint for main.py (--eval --resume, --finetune) and the tools too
    from models.loading import build_model_from_checkpoint

    loaded = build_model_from_checkpoint(tmp_path / "hf")
    assert loaded.id2label == original["id2label"] and loaded.args.hidden_dim == 32
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in original["model"].items())


def test_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--from-hf", str(tmp_path), "--output", str(tmp_path / "x.pth")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no config.json" in err and err.count("\n") == 1
    assert not (tmp_path / "x.pth").exists()


def test_script_entry_point(ours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python tools/convert_hf.py ...`` (run in this interpreter: same code path, no second start-up)."""
    out = tmp_path / "hf"
    monkeypatch.setattr(sys, "argv", ["convert_hf.py", "--to-hf", str(ours), "--output", str(out)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "tools" / "convert_hf.py"), run_name="__main__")
    assert e.value.code == 0 and (out / "config.json").is_file()


def test_official_checkpoint_gets_the_coco_names(tmp_path: Path) -> None:
    """A checkpoint without names and the official 91 classes (as the official code saves them):
    the COCO names at their ids, "N/A" at the others, as on the hub's facebook/detr-resnet-50."""
    official = {**ARCH, "num_classes": 91}
    path = tmp_path / "official.pth"
    torch.save({"model": build_model_from_args(official).state_dict(), "args": official}, path)
    assert main(["--to-hf", str(path), "--output", str(tmp_path / "hf")]) == 0
    names = json.loads((tmp_path / "hf" / "config.json").read_text())["id2label"]
    assert len(names) == 91 and names["1"] == "person" and names["90"] == "toothbrush"
    assert names["0"] == names["12"] == names["83"] == "N/A"
