"""Golden parity with the official DINO (tests/fixtures/dino/*.pt, made by
tests/fixtures/make_dino_golden.py): state-dict keys and shapes in order, the outputs of the
matching, auxiliary, encoder-proposal and denoising queries given the official denoising queries,
the matcher, every loss term (denoising ones too), gradients and post-processing, for DINO-4scale
and DINO-5scale; the denoising queries drawn here match the official draw for the same seed."""

from pathlib import Path

import pytest
import torch
from golden import fill_golden_weights, golden_args

from models import build_model
from models.denoising import DenoisingQueries, make_cdn_queries
from util.config import resolve
from util.misc import NestedTensor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dino"
NAMES = ["dino_4scale_tiny.pt", "dino_5scale_tiny.pt"]


def _args(golden: dict):
    return resolve(golden_args(golden["config"], model="dino", attn_impl="pytorch"))


def _queries(golden: dict) -> DenoisingQueries:
    dn = golden["dn"]
    return DenoisingQueries(dn["labels"], dn["boxes"], dn["attn_mask"], dn["num_groups"])


@pytest.fixture(scope="module", params=NAMES)
def case(request):
    golden = torch.load(FIXTURES / request.param, weights_only=True)
    model, criterion, postprocessors = build_model(_args(golden))
    fill_golden_weights(model)
    return golden, model, criterion, postprocessors


def _close(ours: dict, ref: dict, msg: str) -> None:
    for k in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(ours[k], ref[k], atol=1e-5, rtol=1e-5, msg=lambda m, k=k: f"{msg} {k}: {m}")


def test_state_dict_keys_and_shapes(case):
    golden, model = case[0], case[1]
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == [
        (k, tuple(s)) for k, s in golden["state_dict_shapes"]
    ]


def test_outputs_losses_grads_postprocess(case):
    golden, model, criterion, postprocessors = case
    model.train()  # dropout 0 and frozen BatchNorm: the fixture's training forward, denoising included
    criterion.train()
    model.zero_grad()
    out = model(NestedTensor(golden["samples_tensors"], golden["samples_mask"]), dn=_queries(golden))
    _close(out, golden["outputs"], "final")
    for i, (ours, ref) in enumerate(zip(out["aux_outputs"], golden["aux_outputs"], strict=True)):
        _close(ours, ref, f"aux {i}")
    _close(out["interm_outputs"], golden["interm_outputs"], "interm")
    _close(out["dn_outputs"], golden["dn_outputs"], "denoising")
    for i, (ours, ref) in enumerate(zip(out["dn_outputs"]["aux_outputs"], golden["dn_aux_outputs"], strict=True)):
        _close(ours, ref, f"denoising aux {i}")

    targets = golden["targets"]
    indices = criterion.matcher({k: out[k] for k in ("pred_logits", "pred_boxes")}, targets)
    for (i, j), (gi, gj) in zip(indices, golden["matcher_indices"], strict=True):
        assert torch.equal(i, gi) and torch.equal(j, gj)

    losses = criterion(out, targets)
    assert set(losses) == set(golden["losses"])
    for k, v in golden["losses"].items():
        torch.testing.assert_close(losses[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    assert criterion.weight_dict == golden["weight_dict"]
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    torch.testing.assert_close(total, golden["total_loss"], rtol=1e-5, atol=1e-6)

    total.backward()
    for k, g in golden["grads"].items():  # shared heads: the official name of any of their copies
        scale = max(1.0, float(g.abs().max()))
        torch.testing.assert_close(
            model.get_parameter(k).grad, g, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, k=k: f"{k}: {m}"
        )

    results = postprocessors["bbox"](out, golden["postprocess_target_sizes"])
    for ours, ref in zip(results, golden["postprocess"], strict=True):
        assert torch.equal(ours["labels"], ref["labels"])
        torch.testing.assert_close(ours["scores"], ref["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours["boxes"], ref["boxes"], rtol=1e-5, atol=1e-3)


def test_evaluation_has_no_denoising_and_same_matching_outputs(case):
    golden, model, criterion, _ = case
    model.eval()
    criterion.eval()
    with torch.no_grad():
        out = model(NestedTensor(golden["samples_tensors"], golden["samples_mask"]), golden["targets"])
        losses = criterion(out, golden["targets"])
    assert "dn_outputs" not in out
    _close(out, golden["eval_outputs"], "eval")
    assert losses["loss_ce_dn"] == 0 and "loss_bbox_dn_0" in losses  # the official zero terms


def test_denoising_queries_match_the_official_draw(case):
    """Same seed, same draws in the same order as the official ``prepare_for_cdn``: the noised
    labels and boxes, their slots, the groups and the attention mask are the official ones."""
    golden, model = case[0], case[1]
    torch.manual_seed(1)
    dn = make_cdn_queries(
        golden["targets"], model.dn_number, model.dn_label_noise_ratio, model.dn_box_noise_scale,
        model.num_classes, model.num_queries,
    )  # fmt: skip
    ref = golden["dn"]
    assert dn is not None and dn.num_groups == ref["num_groups"] and dn.pad_size == ref["pad_size"]
    assert torch.equal(dn.labels, ref["labels"])
    assert torch.equal(dn.attn_mask, ref["attn_mask"])
    torch.testing.assert_close(dn.boxes, ref["boxes"], atol=1e-6, rtol=0)


def test_architecture_from_official_weights_and_wrong_model_error(case):
    """The weights alone rebuild the official model (strict load); given to Deformable DETR, a
    one-line error that names the DINO keys (DINO's decoder norm first) and --model."""
    from models import architecture_from_state_dict
    from util.checkpoint import CheckpointError, load_model_state

    golden, model = case[0], case[1]
    state = model.state_dict()
    arch = architecture_from_state_dict(state)
    levels = golden["config"]["num_feature_levels"]
    assert arch["model"] == "dino" and arch["num_feature_levels"] == levels and arch["num_queries"] == 20
    assert (arch["hidden_dim"], arch["dim_feedforward"], arch["num_classes"], arch["backbone"]) == (
        256,
        64,
        20,
        "resnet50",
    )
    rebuilt, _, _ = build_model(
        resolve(golden_args({**arch, "dn_number": golden["config"]["dn_number"]}, attn_impl="pytorch"))
    )
    rebuilt.load_state_dict(state, strict=True)

    deformable, _, _ = build_model(resolve(golden_args({**arch, "model": "deformable_detr", "num_queries": 20})))
    with pytest.raises(CheckpointError) as e:
        load_model_state(deformable, state, "checkpoint0011_4scale.pth")
    msg = str(e.value)
    assert "checkpoint0011_4scale.pth" in msg and "unexpected keys: transformer.decoder.norm.weight" in msg
    assert "--model" in msg and "\n" not in msg


def test_official_style_checkpoint_loads_without_flags(case, tmp_path):
    """A checkpoint as the official code saves it (``model`` and its ``argparse.Namespace`` args,
    no ``--model``): rebuilt as DINO from the weights and args, the official evaluation outputs."""
    import argparse

    from models.loading import build_model_from_checkpoint

    golden, model = case[0], case[1]
    path = tmp_path / "checkpoint0011_4scale.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(**golden["config"]), "epoch": 11}, path)
    loaded = build_model_from_checkpoint(str(path), device="cpu")
    assert loaded.args.model == "dino" and loaded.args.num_feature_levels == golden["config"]["num_feature_levels"]
    with torch.no_grad():
        out = loaded.model(NestedTensor(golden["samples_tensors"], golden["samples_mask"]))
    _close(out, golden["eval_outputs"], "loaded")
