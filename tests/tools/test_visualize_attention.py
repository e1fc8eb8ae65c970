"""tools/visualize_attention.py: the hooked attention equals a direct computation, the hooks leave
no trace, and the pictures are written for DETR, Deformable DETR and DINO (a checkpoint made here:
DINO is not among the shared tiny checkpoints)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from conftest import DINO_FLAGS, ID2LABEL, TINY_FLAGS, tiny_args, write_image
from PIL import Image
from torch import nn

from models import build_model
from tools import visualize_attention as va
from util import config
from util.checkpoint import save_checkpoint


def sampling_args(variant: str):
    """The tiny settings of ``variant``: a shared one, or ``dino``."""
    if variant == "dino":
        return config.resolve(config.get_args_parser().parse_args([*TINY_FLAGS, *DINO_FLAGS]))
    return tiny_args(variant)


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoints, tmp_path_factory):
    """The shared tiny checkpoints and a tiny DINO one saved as ``main.py`` saves it."""
    torch.manual_seed(3)
    args = sampling_args("dino")
    model, _, _ = build_model(args)
    path = tmp_path_factory.mktemp("dino") / "dino.pth"
    save_checkpoint({"model": model.state_dict(), "args": config.saved(args), "id2label": ID2LABEL}, path)
    return {**tiny_checkpoints, "dino": path}


@pytest.mark.parametrize("batch_first", [False, True])
def test_mha_weights_equal_pytorch(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    q, k = torch.randn(5, 2, 16), torch.randn(7, 2, 16)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 5:] = True
    if batch_first:
        q, k = q.transpose(0, 1), k.transpose(0, 1)
    expected = mha(q, k, k, key_padding_mask=mask, need_weights=True, average_attn_weights=True)[1]
    got = va.mha_weights(mha, q, k, key_padding_mask=mask)
    assert got.shape == (2, 5, 7)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got[1, :, 5:].abs().max() == 0  # padding gets no attention


def _samples(h: int = 64, w: int = 80) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, 3, h, w)


def test_detr_hooks_capture_the_attention_of_the_forward():
    torch.manual_seed(0)
    model, _, _ = build_model(tiny_args("detr"))
    model.eval()
    x = _samples()
    with torch.no_grad():
        plain = model(x)
    att = va.capture_detr_attention(model, x)
    torch.testing.assert_close(att.outputs["pred_boxes"], plain["pred_boxes"])  # same forward, same outputs
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())  # hooks removed
    h, w = att.feature_size
    assert (h, w) == (2, 3)  # 64x80 at stride 32
    assert att.decoder.shape == (1, 8, h * w) and att.encoder.shape == (1, h * w, h * w)
    torch.testing.assert_close(att.decoder.sum(-1), torch.ones(1, 8))

    # Direct computation: the last decoder layer's cross-attention module called with need_weights=True
    # on the inputs it receives in the forward pass (recorded by a plain pre-hook here).
    attn = model.transformer.decoder.layers[-1].multihead_attn
    seen = []
    handle = attn.register_forward_pre_hook(lambda m, a, kw: seen.append((a, kw)), with_kwargs=True)
    with torch.no_grad():
        model(x)
        handle.remove()
        (q, k, v), kw = seen[0]
        direct = attn(q, k, v, key_padding_mask=kw["key_padding_mask"], need_weights=True)[1]
    assert kw["need_weights"] is False  # normal inference does not compute the weights
    torch.testing.assert_close(att.decoder, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["deformable", "dino"])
def test_deformable_hooks_equal_what_the_op_receives(variant, monkeypatch):
    torch.manual_seed(0)
    model, _, _ = build_model(sampling_args(variant))
    model.eval()
    for p in model.parameters():  # offsets and weights away from their symmetric initialisation
        p.data.add_(0.05 * torch.randn_like(p))
    msda = importlib.import_module("models.ops.ms_deform_attn")
    calls = []
    real = msda.ms_deform_attn

    def recording(value, shapes, start, locations, weights, impl="auto"):
        calls.append((locations.clone(), weights.clone()))
        return real(value, shapes, start, locations, weights, impl)

    monkeypatch.setattr(msda, "ms_deform_attn", recording)
    samp = va.capture_deformable_sampling(model, _samples())
    n_layers = len(model.transformer.decoder.layers)
    locations, weights = calls[-1]  # the op calls: encoder layer(s), then decoder layers; the last is ours
    assert len(calls) == 1 + n_layers
    torch.testing.assert_close(samp.locations, locations, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(samp.weights, weights, rtol=1e-5, atol=1e-6)
    assert samp.reference_points.shape[-1] == 4  # box refinement (DINO: anchor boxes): boxes after the first layer
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("variant,pictures", [
    ("detr", ["photo_decoder_attention.png", "photo_encoder_attention.png"]),
    ("deformable", ["photo_sampling_points.png"]),
    ("dino", ["photo_sampling_points.png"]),
])  # fmt: skip
def test_pictures_are_written(variant, pictures, checkpoints, tmp_path, capsys):
    image = write_image(tmp_path / "photo.png", 120, 90)
    out = tmp_path / "out"
    va.main(["--checkpoint", str(checkpoints[variant]), str(image), "--output", str(out), "--max_objects", "2",
             "--threshold", "0.0"])  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == pictures
    for name in pictures:
        with Image.open(out / name) as img:
            assert img.width >= 300 and img.height >= 200
            pixels = np.asarray(img.convert("RGB").resize((64, 64))).reshape(-1, 3)
            assert len(np.unique(pixels, axis=0)) > 50  # a picture, not a blank canvas
    assert "2 object(s)" in capsys.readouterr().out


def test_bad_image(tiny_checkpoints, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(SystemExit) as e:
        va.main(["--checkpoint", str(tiny_checkpoints["detr"]), str(bad), "--output", str(tmp_path / "out")])
    assert str(e.value.code).startswith("error: ") and str(bad) in str(e.value.code)
    assert not (tmp_path / "out").exists()
