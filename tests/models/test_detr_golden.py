"""Golden parity with the official DETR (shared/golden/detr_tiny.pt): state-dict keys and shapes,
outputs, matcher, every loss term, gradients and post-processing; the same outputs with the
inference fast paths on, and bf16 autocast within its stated tolerance."""

import pytest
import torch
from golden import (
    check_against_golden,
    check_inference_fast_path,
    check_training_fast_path,
    fill_golden_weights,
    golden_args,
    load_golden,
)

from models import build_model
from util.config import resolve
from util.misc import NestedTensor


@pytest.fixture(scope="module")
def golden():
    return load_golden("detr_tiny.pt")


@pytest.fixture(scope="module")
def built(golden):
    args = resolve(golden_args(golden["config"], num_classes=20))
    model, criterion, postprocessors = build_model(args)
    fill_golden_weights(model)
    return model, criterion, postprocessors


def test_state_dict_keys_and_shapes(golden, built):
    model = built[0]
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, tuple(s)) for k, s in golden["state_dict_shapes"]]


def test_outputs_losses_grads_postprocess(golden, built):
    model, criterion, postprocessors = built
    model.zero_grad()
    out = model(NestedTensor(golden["samples_tensors"], golden["samples_mask"]))
    for k in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(out[k], golden["outputs"][k], atol=1e-5, rtol=1e-5)
    assert len(out["aux_outputs"]) == len(golden["aux_outputs"])
    for ours, ref in zip(out["aux_outputs"], golden["aux_outputs"]):
        for k in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(ours[k], ref[k], atol=1e-5, rtol=1e-5)

    assert criterion.weight_dict == golden["weight_dict"]
    check_against_golden(golden, model, criterion, postprocessors, out)


def test_model_accepts_tensor_and_list(golden, built):
    model = built[0]
    with torch.no_grad():
        ref = model(NestedTensor(golden["samples_tensors"], golden["samples_mask"]))
        from_list = model(list(golden["images"]))
    torch.testing.assert_close(from_list["pred_logits"], ref["pred_logits"], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        batch = model(golden["samples_tensors"][:1, :, :96, :128])
    assert batch["pred_boxes"].shape == (1, 12, 4)


def test_inference_fast_path_keeps_official_numbers(golden, built):
    check_inference_fast_path(golden, built[0], built[2])


def test_training_fast_path_keeps_official_gradients(golden, built):
    check_training_fast_path(golden, *built)


def test_bf16_autocast_within_tolerance(golden, built):
    """bf16 keeps 8 bits of mantissa: on this model outputs move by about 1e-2 (stated bound
    3e-2 on boxes and class probabilities); they come back in float32."""
    from models.optimize import optimize_for_inference

    out = optimize_for_inference(built[0], amp="bf16")(NestedTensor(golden["samples_tensors"], golden["samples_mask"]))
    assert out["pred_logits"].dtype == out["pred_boxes"].dtype == torch.float32
    torch.testing.assert_close(out["pred_boxes"], golden["outputs"]["pred_boxes"], atol=3e-2, rtol=0)
    probs, ref = out["pred_logits"].softmax(-1), golden["outputs"]["pred_logits"].softmax(-1)
    torch.testing.assert_close(probs, ref, atol=3e-2, rtol=0)
    assert (out["pred_boxes"] - golden["outputs"]["pred_boxes"]).abs().max() > 1e-5  # autocast really ran
