"""torch.hub Deformable DETR entries: the five official architectures offline, the Hugging Face hub
URLs, download -> conversion -> cache -> load, fine-tuning heads, and one clear error offline."""

from __future__ import annotations

import dataclasses
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch

import hubconf
from models.hf_convert import checkpoint_to_hf
from util.checkpoint import CheckpointError

ENTRIES = {  # entry: (feature levels, box refinement, two-stage, backbone strides)
    "deformable_detr": (4, False, False, [8, 16, 32]),
    "deformable_detr_single_scale": (1, False, False, [32]),
    "deformable_detr_single_scale_dc5": (1, False, False, [16]),
    "deformable_detr_refine": (4, True, False, [8, 16, 32]),
    "deformable_detr_two_stage": (4, True, True, [8, 16, 32]),
}


def _no_network(*a, **k):
    raise AssertionError("pretrained=False must not download anything")


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_architectures_offline(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    levels, refine, two_stage, strides = ENTRIES[name]
    model, post = getattr(hubconf, name)(return_postprocessor=True)
    assert (model.num_feature_levels, model.with_box_refine, model.two_stage) == (levels, refine, two_stage)
    assert model.backbone.strides == strides and model.transformer.d_model == 256 and model.num_queries == 300
    assert model.class_embed[0].out_features == 91 and len(model.transformer.encoder.layers) == 6
    assert type(post).__name__ == "PostProcess" and not model.aux_loss


def _tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same entries with a tiny architecture (the download/convert/cache path does not depend on size)."""
    full = hubconf._deformable_config
    small = {"backbone": "resnet18", "hidden_dim": 64, "nheads": 2, "enc_layers": 1, "dec_layers": 2,
             "dim_feedforward": 32, "num_queries": 12}  # fmt: skip
    monkeypatch.setattr(hubconf, "_deformable_config", lambda name, n: dataclasses.replace(full(name, n), **small))


def test_pretrained_downloads_converts_and_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    _tiny(monkeypatch)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(0)
    source = hubconf.deformable_detr_two_stage()
    checkpoint_to_hf({"model": source.state_dict(), "args": hubconf._deformable_config("deformable_detr_two_stage", 91).architecture()},
                     tmp_path / "remote")  # fmt: skip
    urls = []

    def fake_download(url, dst, progress=True):
        urls.append(url)
        shutil.copy(tmp_path / "remote" / url.rsplit("/", 1)[1], dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model = hubconf.deformable_detr_two_stage(pretrained=True)
    repo = "https://huggingface.co/SenseTime/deformable-detr-with-box-refine-two-stage/resolve/main/"
    assert urls == [repo + "config.json", repo + "model.safetensors"]
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    cached = tmp_path / "hub" / "checkpoints" / "SenseTime--deformable-detr-with-box-refine-two-stage.pth"
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]  # no download folder left

    tuned = hubconf.deformable_detr_two_stage(pretrained=True, num_classes=5)  # from the cache: no download
    assert len(urls) == 2 and tuned.class_embed[0].out_features == 5
    assert tuned.transformer.decoder.class_embed[0].out_features == 5
    assert torch.equal(tuned.bbox_embed[1].layers[0].weight, source.bbox_embed[1].layers[0].weight)
    with pytest.raises(CheckpointError, match="is not the deformable_detr architecture"):
        shutil.copy(cached, cached.parent / "SenseTime--deformable-detr.pth")
        hubconf.deformable_detr(pretrained=True)


def test_missing_safetensors_file_falls_back_to_bin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    _tiny(monkeypatch)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    source = hubconf.deformable_detr_single_scale()
    checkpoint_to_hf({"model": source.state_dict(), "args": hubconf._deformable_config("deformable_detr_single_scale", 91).architecture()},
                     tmp_path / "remote")  # fmt: skip
    from safetensors.torch import load_file

    torch.save(load_file(tmp_path / "remote" / "model.safetensors"), tmp_path / "remote" / "pytorch_model.bin")

    def fake_download(url, dst, progress=True):
        if url.endswith("model.safetensors"):
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        shutil.copy(tmp_path / "remote" / url.rsplit("/", 1)[1], dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model = hubconf.deformable_detr_single_scale(pretrained=True)
    assert torch.equal(model.query_embed.weight, source.query_embed.weight)


def test_offline_gives_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*a, **k):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError) as e:
        hubconf.deformable_detr_single_scale_dc5(pretrained=True)
    message = str(e.value)
    assert "\n" not in message and "Offline?" in message and "tools/convert_hf.py" in message
    assert "https://huggingface.co/SenseTime/deformable-detr-single-scale-dc5/resolve/main/config.json" in message
    assert not any((tmp_path / "checkpoints").iterdir())  # nothing partial cached
