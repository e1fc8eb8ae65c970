"""torch.hub panoptic entry points: official signature, URLs with hash checking, the post-processor
with the official COCO thing map, loading of a checkpoint, and fine-tuning with another class count
(every weight but the class head loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_hubconf import assert_fine_tuned, fake_checkpoint, serve_instead_of_downloads

import hubconf
from models.segmentation import DETRsegm, PostProcessPanoptic


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("detr_resnet50_panoptic", "https://dl.fbaipublicfiles.com/detr/detr-r50-panoptic-00ce5173.pth"),
        ("detr_resnet50_dc5_panoptic", "https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-panoptic-da08f1b1.pth"),
        ("detr_resnet101_panoptic", "https://dl.fbaipublicfiles.com/detr/detr-r101-panoptic-40021d53.pth"),
    ],
)
def test_official_urls_with_hash_check(monkeypatch: pytest.MonkeyPatch, tmp_path, name: str, url: str) -> None:
    calls = []

    def fake(u, dst, hash_prefix=None, progress=True):
        calls.append((u, hash_prefix))
        raise _Stop

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake)
    with pytest.raises(_Stop):
        getattr(hubconf, name)(pretrained=True)
    assert calls[0] == (url, url.rsplit("-", 1)[1][:8])  # downloaded with the hash in its name checked


def test_panoptic_model_and_postprocessor_then_fine_tuning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model, post = hubconf.detr_resnet50_panoptic(threshold=0.7, return_postprocessor=True)
    assert isinstance(model, DETRsegm) and model.detr.class_embed.out_features == 251
    assert model.detr.num_queries == 100 and not model.detr.aux_loss
    assert isinstance(post, PostProcessPanoptic) and post.threshold == 0.7
    assert post.is_thing_map == {i: i <= 90 for i in range(250)}

    state = fake_checkpoint(model)
    serve_instead_of_downloads(state, monkeypatch, tmp_path)
    torch.manual_seed(0)
    tuned = hubconf.detr_resnet50_panoptic(pretrained=True, num_classes=7)
    torch.manual_seed(0)
    fresh = hubconf.detr_resnet50_panoptic(num_classes=7)
    assert tuned.detr.class_embed.out_features == 8
    assert_fine_tuned(tuned, fresh, state, "detr.class_embed.")
