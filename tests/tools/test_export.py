"""Export to ONNX and torch.export, checked with onnxruntime / the loaded program against PyTorch:
the official test_all.py ONNX procedure on small random DETR models, tools/export.py end to end for
DETR, Deformable DETR and DINO (denoising off at inference) with dynamic batch and image size, and
bad input."""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import DINO_FLAGS, ID2LABEL, TINY_FLAGS, VARIANTS, tiny_args, write_image
from torch import nn

from models import build_model
from tools import export as export_tool
from tools.inference import load_detector
from util import config
from util.checkpoint import save_checkpoint

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (requirements-dev.txt)")
onnx = pytest.importorskip("onnx", reason="onnx not installed (requirements-dev.txt)")


def _ort_outputs(path, x: torch.Tensor) -> list[torch.Tensor]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {session.get_inputs()[0].name: x.numpy()})]


@pytest.mark.parametrize("variant", ["detr", "panoptic"])
def test_model_onnx_detection(variant, tmp_path):
    """The official ``ONNXExporterTester.test_model_onnx_detection`` (and its panoptic twin, skipped
    there for memory), same procedure: the model without auxiliary outputs (as the hub's), run once
    on a constant image, exported by ``torch.onnx.export`` (TorchScript exporter, constant folding)
    on a random image of another size, run in onnxruntime and compared with PyTorch (rtol 1e-3,
    atol 1e-5). A small random model instead of the hub's ResNet-50, and opset 14 instead of 12
    (the attention runs through ``scaled_dot_product_attention``, which opset 12 lacks)."""
    torch.manual_seed(123)
    model, _, _ = build_model(tiny_args(variant))
    model.eval()
    getattr(model, "detr", model).aux_loss = False
    model(torch.ones(1, 3, 80, 80) * 0.3)
    x = torch.rand(1, 3, 75, 80)
    names = ["pred_logits", "pred_boxes"] + (["pred_masks"] if variant == "panoptic" else [])
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=14, do_constant_folding=True,
                          input_names=["inputs"], output_names=names)  # fmt: skip
    with torch.no_grad():
        expected = model(x)
    got = _ort_outputs(path, x)
    assert len(got) == len(names)
    for name, value in zip(names, got):
        torch.testing.assert_close(value, expected[name], rtol=1e-3, atol=1e-5)


@pytest.fixture(scope="module")
def small_image_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of models for 64 px images (``--val_size 64``, as ``main.py`` saves them), one
    decoder layer each: DETR (its empty auxiliary outputs broke ``torch.export``'s file) and
    Deformable DETR with its four official feature levels (the coarsest, stride 64, is one pixel
    at 64 px: specialised to a constant, it broke the ONNX file at other sizes), and DINO with four
    levels."""
    folder = tmp_path_factory.mktemp("small_image_checkpoints")
    paths = {}
    levels = ["--num_feature_levels", "4"]
    models = {
        "detr": VARIANTS["detr"],
        "deformable": [*VARIANTS["deformable"], *levels],
        "dino": [*DINO_FLAGS, *levels],
    }
    for variant, flags in models.items():
        torch.manual_seed(0)
        flags = [*TINY_FLAGS, *flags, "--dec_layers", "1"]
        args = config.resolve(config.get_args_parser().parse_args(flags))
        model, _, _ = build_model(args)
        paths[variant] = folder / f"{variant}.pth"
        save_checkpoint({"model": model.state_dict(), "args": config.saved(args), "id2label": ID2LABEL}, paths[variant])
    return paths


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "fmt"), [("detr", "onnx"), ("detr", "torch_export"), ("deformable", "onnx"),
                                              ("deformable", "torch_export"), ("dino", "onnx")])  # fmt: skip
def test_export_command(variant, fmt, small_image_checkpoints, tmp_path, capsys):
    """``tools/export.py`` on a model for small images: the file is checked at three sizes (the
    example raised to the smallest side the model takes, 3/4 of it, and 800 px high), then runs
    at sizes and batches it was neither traced nor checked with, 96x128 and 128x128, as PyTorch
    does; its dimensions are named."""
    image = write_image(tmp_path / "photo.png", 100, 70)
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt2")
    export_tool.main(["--checkpoint", str(small_image_checkpoints[variant]), "--format", fmt, "--output", str(out),
                      "--image", str(image)])  # fmt: skip
    text = capsys.readouterr().out
    min_side = 33 if variant == "detr" else 65  # coarsest stride 64 (4 levels: Deformable DETR, DINO) or 32, plus 1
    checked = re.findall(r"max abs diff vs PyTorch on (\S+):", text)
    large = "1x3x800x1138" if variant == "detr" else "1x3x800x1120"
    assert checked == [f"1x3x{max(64, min_side)}x91", f"2x3x{max(48, min_side)}x68", large], text
    assert f"sides at least {min_side}" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, "photo.png"])  # no temporary file left
    if fmt == "onnx":
        model = onnx.load(str(out))
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["val_size"] == "64" and meta["min_side"] == str(min_side)
        assert meta["model"] == {"detr": "detr", "deformable": "deformable_detr", "dino": "dino"}[variant]
        assert meta["scores"] == ("sigmoid" if variant != "detr" else "softmax over classes + no-object (last)")
        assert json.loads(meta["id2label"])["1"] == "square"
        dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", 3, "height", "width"]
        assert [d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim][0] == "batch"

    loaded = load_detector(str(small_image_checkpoints[variant]), overrides={"attn_impl": "pytorch"})
    wrapper = export_tool.ExportableDetector(loaded.model).eval()
    run = export_tool.run_exported(fmt, out)
    for shape in [(3, 3, 96, 128), (1, 3, 128, 128)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = wrapper(x)
        got = run(x)
        for e, g in zip(expected, got, strict=True):
            assert g.shape == e.shape
            torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-4)


class _TwoConvs(nn.Module):
    """A stand-in detector (two convolutions) for the export machinery's failure path."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred_logits": self.a(x).flatten(2), "pred_boxes": self.b(x).flatten(2).sigmoid()}


def test_failed_check_keeps_nothing(tmp_path):
    wrapper = export_tool.ExportableDetector(_TwoConvs()).eval()
    inputs = [torch.randn(1, 3, 40, 48), torch.randn(2, 3, 36, 40)]
    out = tmp_path / "model.pt2"
    with pytest.raises(export_tool.ExportCheckError, match="nothing written"):  # a negative tolerance cannot be met
        export_tool.export_checked(wrapper, torch.randn(2, 3, 40, 48), inputs, "torch_export", out, {}, tolerance=-1)
    assert not list(tmp_path.iterdir())
    result = export_tool.export_checked(wrapper, torch.randn(2, 3, 40, 48), inputs, "torch_export", out, {"k": "v"})
    assert out.is_file() and max(d["pred_boxes"] for d in result["diffs"]) <= 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]


def test_missing_package_is_named(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    out = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as e:
        export_tool.main(["--checkpoint", str(tiny_checkpoints["detr"]), "--output", str(out)])
    assert str(e.value.code).startswith("error: --format onnx needs the package(s) onnxruntime")
    assert not list(tmp_path.iterdir())


def test_bad_input(tiny_checkpoints, tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for argv, expected in [
        (["--checkpoint", str(bad), "--output", str(tmp_path / "m.pt2")], str(bad)),
        (["--checkpoint", str(tiny_checkpoints["detr"]), "--output", str(tmp_path / "m.pt2"), "--image", str(broken)],
         str(broken)),
        (["--checkpoint", str(bad), "--output", str(tmp_path / "new" / "m.pt2")], str(bad)),  # no folder left
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as e:
            export_tool.main(["--format", "torch_export", *argv])
        assert str(e.value.code).startswith("error: ") and expected in str(e.value.code), e.value.code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "notes.pth"]
