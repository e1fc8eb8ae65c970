"""torch.hub entry points: local load offline, official URLs and hash checking, fine-tuning with another
class count (every weight but the class head loaded from the checkpoint), clear offline error."""

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

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    model = torch.hub.load(str(ROOT), "detr_resnet50", source="local", pretrained=False)
    assert model.class_embed.out_features == 92 and model.num_queries == 100
    model, post = hubconf.detr_resnet101_dc5(num_classes=10, return_postprocessor=True)
    assert model.class_embed.out_features == 11 and type(post).__name__ == "PostProcess"


def fake_checkpoint(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with random values: the weights of a fake official checkpoint."""
    g = torch.Generator().manual_seed(123)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def serve_instead_of_downloads(state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch, cache: Path) -> list:
    """Every ``torch.hub`` download (into the empty cache folder ``cache``, a test's ``tmp_path``:
    removed after it) writes ``{"model": state}``, as an official checkpoint file holds; returns
    the requests made as ``(url, hash_prefix)``."""
    calls = []
    monkeypatch.setenv("TORCH_HOME", str(cache))

    def serve(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save({"model": dict(state)}, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", serve)
    return calls


def assert_fine_tuned(tuned: torch.nn.Module, fresh: torch.nn.Module, state: dict, head: str) -> None:
    """``tuned`` (pretrained, other class count) holds every checkpoint weight but the class head
    ``head``, which is that of ``fresh`` (the same model built from the same seed without weights)."""
    own, new = tuned.state_dict(), fresh.state_dict()
    assert set(own) == set(state)
    reinit = [k for k in own if k.startswith(head)]
    assert reinit == [f"{head}weight", f"{head}bias"]
    for k in reinit:
        assert own[k].shape != state[k].shape and torch.equal(own[k], new[k]), k
    kept = [k for k in own if k not in reinit]
    assert len(kept) > 300
    for k in kept:
        assert torch.equal(own[k], state[k]), f"{k} was not loaded from the checkpoint"


@pytest.fixture(scope="module")
def r50_checkpoint() -> dict[str, torch.Tensor]:
    return fake_checkpoint(hubconf._make_detr("resnet50"))


def test_pretrained_uses_official_url_with_hash_check(monkeypatch, r50_checkpoint, tmp_path):
    state = r50_checkpoint
    calls = serve_instead_of_downloads(state, monkeypatch, tmp_path)
    model = hubconf.detr_resnet50(pretrained=True)
    assert calls[0] == ("https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth", "e632da11")  # hash checked
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_finetune_accepts_hub_names(monkeypatch, r50_checkpoint, tmp_path):
    """``main.py --finetune detr_resnet50``: the hub entry's official checkpoint."""
    from models.loading import read_checkpoint

    calls = serve_instead_of_downloads(r50_checkpoint, monkeypatch, tmp_path)
    ckpt = read_checkpoint("detr_resnet50")
    assert calls == [("https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth", "e632da11")]
    assert ckpt["model"].keys() == r50_checkpoint.keys()
    assert {"detr_resnet50", "detr_resnet101_panoptic", "deformable_detr_two_stage"} <= set(hubconf.pretrained_names())


def test_pretrained_fine_tuning_keeps_all_but_the_class_head(monkeypatch, r50_checkpoint, tmp_path):
    state = r50_checkpoint
    serve_instead_of_downloads(state, monkeypatch, tmp_path)
    torch.manual_seed(0)
    tuned = hubconf.detr_resnet50(pretrained=True, num_classes=5)
    torch.manual_seed(0)
    fresh = hubconf.detr_resnet50(pretrained=False, num_classes=5)
    assert tuned.class_embed.out_features == 6
    assert_fine_tuned(tuned, fresh, state, "class_embed.")


def test_offline_pretrained_gives_clear_error(monkeypatch, tmp_path):
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError, match="could not download checkpoint https://dl.fbaipublicfiles.com"):
        hubconf.detr_resnet50_dc5(pretrained=True)


def test_fork_snippet_loads_a_voc_checkpoint_of_main(tmp_path):
    """The VOC fork's way of using a fine-tuned model (hub model with the class count, then the
    checkpoint's ``model``) works on a checkpoint that ``main.py`` writes for VOC with the default
    DETR-R50 architecture: ``num_classes`` 20 here (the fork's 22 came from its one-based ids)."""
    from models import build_model
    from util.checkpoint import save_checkpoint
    from util.config import get_args_parser, resolve

    args = resolve(
        get_args_parser().parse_args(["--num_classes", "20", "--device", "cpu", "--backbone_weights", "none"])
    )
    ours = build_model(args)[0]
    save_checkpoint({"model": ours.state_dict(), "args": vars(args)}, tmp_path / "checkpoint.pth")
    model = torch.hub.load(str(ROOT), "detr_resnet50", source="local", pretrained=False, num_classes=20)
    checkpoint = torch.load(tmp_path / "checkpoint.pth", map_location="cpu", weights_only=True)
    result = model.load_state_dict(checkpoint["model"], strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in model.state_dict().items():
        assert torch.equal(v, checkpoint["model"][k]), k
