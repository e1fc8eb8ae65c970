"""Atomic saving, weights-only loading, readable errors for bad checkpoints, RNG state."""

import argparse
import random

import pytest
import torch
from local_server import LocalServer
from torch import nn

from util import checkpoint as ck


def test_save_is_atomic_and_loads_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    ck.save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1

    # A crash in the middle of writing leaves the previous checkpoint intact and no temp file.
    def crash(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert ck.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "missing.pth")
    truncated = tmp_path / "truncated.pth"
    ck.save_checkpoint({"model": {"w": torch.ones(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ck.CheckpointError, match="truncated.pth could not be read"):
        ck.load_checkpoint(truncated)


def test_official_checkpoint_with_namespace_loads_weights_only(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=1e-4), "epoch": 3}, path)
    assert ck.load_checkpoint(path)["args"].lr == 1e-4
    with torch.serialization.safe_globals([argparse.Namespace]):  # as timm loads its weights: on exit, the
        pass  # context manager unregisters Namespace, even though it was registered before
    assert ck.load_checkpoint(path)["args"].lr == 1e-4


def test_load_model_state_lists_mismatches():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = model.state_dict()
    ck.load_model_state(model, dict(state), "ok.pth")
    bad = dict(state)
    bad["0.weight"] = torch.zeros(4, 2)
    bad.pop("1.bias")
    bad["2.weight"] = torch.zeros(1)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_model_state(model, bad, "other.pth")
    msg = str(e.value)
    assert "other.pth" in msg and "1.bias" in msg and "2.weight" in msg and "0.weight" in msg


def test_rng_state_round_trip(tmp_path):
    state = ck.get_rng_state()
    ck.save_checkpoint({"rng": state}, tmp_path / "r.pth")
    a = (random.random(), torch.rand(3))
    ck.set_rng_state(ck.load_checkpoint(tmp_path / "r.pth")["rng"])
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


# ------------------------------------------------------------------ downloads, output folder, rotation


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    html = b"<html><body>Sign in to download</body></html>"
    good = tmp_path / "good.pth"
    ck.save_checkpoint({"model": {"w": torch.ones(2)}}, good)
    s = LocalServer({"/bad.pth": html, "/detr-r50-e632da11.pth": html, "/good.pth": good.read_bytes()})
    yield s
    s.close()


def test_bad_download_is_removed_from_the_cache(server, tmp_path):
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    for _ in range(2):  # every try downloads again: nothing poisoned stays behind
        with pytest.raises(ck.CheckpointError) as e:
            ck.load_checkpoint(f"{server.url}/bad.pth")
        msg = str(e.value)
        assert "bad.pth is not a valid checkpoint; removed it from the cache" in msg and "\n" not in msg
        assert not list(cache.rglob("bad.pth"))
    assert server.requests.count("/bad.pth") == 2
    # a name with a hash: the wrong bytes never reach the cache
    with pytest.raises(ck.CheckpointError, match="is corrupt"):
        ck.load_checkpoint(f"{server.url}/detr-r50-e632da11.pth")
    assert not list(cache.rglob("detr-r50*"))
    # a good file is downloaded once and then read from the cache
    for _ in range(2):
        assert torch.equal(ck.load_checkpoint(f"{server.url}/good.pth")["model"]["w"], torch.ones(2))
    assert server.requests.count("/good.pth") == 1


def test_prepare_output_dir_refuses_unwritable_and_cleans_interrupted_saves(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ck.CheckpointError, match="a_file/run cannot be written"):
        ck.prepare_output_dir(blocker / "run")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint.pth.k2j4.tmp").write_bytes(b"0" * 100)  # left by a save killed with SIGKILL
    notes = ck.prepare_output_dir(out)
    assert notes == [f"removed 1 temporary file(s) of interrupted saves from {out}"]
    assert list(out.iterdir()) == []
    assert ck.check_free_space(out, 1) is None
    free = ck.shutil.disk_usage(out).free
    assert "less than three checkpoints" in ck.check_free_space(out, free // 2)
    with pytest.raises(ck.CheckpointError, match="less than one checkpoint"):
        ck.check_free_space(out, 10**15)


def test_keep_rolls_the_previous_checkpoints(tmp_path):
    path = tmp_path / "checkpoint.pth"
    for epoch in range(4):
        ck.save_checkpoint({"epoch": epoch}, path, keep=3)
    kept = {p.name: torch.load(p, weights_only=True)["epoch"] for p in tmp_path.iterdir()}
    assert kept == {"checkpoint.pth": 3, "checkpoint_prev.pth": 2, "checkpoint_prev2.pth": 1}
    names = ["checkpoint.pth", "checkpoint_prev.pth", "checkpoint_prev2.pth"]
    assert [p.name for p in ck.resume_candidates(tmp_path)] == names
    ck.save_checkpoint({"epoch": 4}, path, keep=1)
    assert torch.load(tmp_path / "checkpoint_prev.pth", weights_only=True)["epoch"] == 2  # untouched


def test_finetune_weights_reinitialise_only_the_heads():
    from models import build_model
    from util.config import get_args_parser, resolve

    def model(*flags: str) -> nn.Module:
        base = ["--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim", "32", "--nheads", "2",
                "--enc_layers", "1", "--dec_layers", "2", "--dim_feedforward", "64", "--device", "cpu"]  # fmt: skip
        return build_model(resolve(get_args_parser().parse_args([*base, *flags])))[0]

    source = model("--num_classes", "91", "--num_queries", "10").state_dict()
    target = model("--num_classes", "5", "--num_queries", "6")
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    notes = ck.load_finetune_weights(target, source, "src.pth")
    assert any("re-initialised class_embed.weight: checkpoint (92, 32), model (6, 32)" in n for n in notes)
    assert any("re-initialised query_embed.weight" in n for n in notes)
    for k, v in target.state_dict().items():
        expected = fresh[k] if k.startswith(("class_embed", "query_embed")) else source[k]
        assert torch.equal(v, expected), k
    # a box model into a model with a mask head: the mask head stays fresh
    masks = model("--num_classes", "5", "--num_queries", "6", "--masks")
    ck.load_finetune_weights(masks, target.state_dict(), "boxes.pth")
    assert torch.equal(
        masks.detr.transformer.encoder.layers[0].linear1.weight, target.transformer.encoder.layers[0].linear1.weight
    )
    # another architecture is an error listing the keys
    with pytest.raises(ck.CheckpointError, match="transformer.decoder.layers.1") as e:
        ck.load_finetune_weights(model("--dec_layers", "1", "--num_classes", "5"), source, "src.pth")
    assert "src.pth" in str(e.value)
