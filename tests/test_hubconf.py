"""torch.hub entry points: local load offline, official URLs and hash checking, clear offline error."""

import urllib.error
from pathlib import Path

import pytest
import torch

import hubconf
from util.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def test_local_hub_load_offline_without_download(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("pretrained=False must not download anything")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    model = torch.hub.load(str(ROOT), "detr_resnet50", source="local", pretrained=False)
    assert model.class_embed.out_features == 92 and model.num_queries == 100
    model, post = hubconf.detr_resnet101_dc5(num_classes=10, return_postprocessor=True)
    assert model.class_embed.out_features == 11 and type(post).__name__ == "PostProcess"


def test_pretrained_uses_official_url_with_hash_check(monkeypatch):
    calls = []

    def fake(url, **kw):
        calls.append((url, kw))
        model = hubconf._make_detr("resnet50")
        return {"model": model.state_dict()}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake)
    hubconf.detr_resnet50(pretrained=True)
    assert calls[0][0] == "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth"
    assert calls[0][1]["check_hash"] is True
    # fine-tuning: another class count keeps all but the class head
    model = hubconf.detr_resnet50(pretrained=True, num_classes=5)
    assert model.class_embed.out_features == 6


def test_offline_pretrained_gives_clear_error(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match="could not download checkpoint https://dl.fbaipublicfiles.com"):
        hubconf.detr_resnet50_dc5(pretrained=True)
