"""Golden parity with the official DETR (shared/golden/detr_tiny.pt): state-dict keys and shapes,
outputs, matcher, every loss term, gradients and post-processing."""

import pytest
import torch
from golden import fill_golden_weights, golden_args, load_golden

from main import resolve_args
from models import build_model
from util.misc import NestedTensor


@pytest.fixture(scope="module")
def golden():
    return load_golden("detr_tiny.pt")


@pytest.fixture(scope="module")
def built(golden):
    args = resolve_args(golden_args(golden["config"], num_classes=20))
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

    indices = criterion.matcher({k: v for k, v in out.items() if k != "aux_outputs"}, golden["targets"])
    for (i, j), (gi, gj) in zip(indices, golden["matcher_indices"]):
        assert torch.equal(i, gi) and torch.equal(j, gj)

    losses = criterion(out, golden["targets"])
    assert set(losses) == set(golden["losses"])
    for k, v in golden["losses"].items():
        torch.testing.assert_close(losses[k], v, rtol=1e-5, atol=1e-6)
    assert criterion.weight_dict == golden["weight_dict"]
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    torch.testing.assert_close(total, golden["total_loss"], rtol=1e-5, atol=1e-6)

    total.backward()
    params = dict(model.named_parameters())
    for k, g in golden["grads"].items():
        torch.testing.assert_close(params[k].grad, g, rtol=1e-4, atol=1e-5)

    results = postprocessors["bbox"](out, golden["postprocess_target_sizes"])
    for ours, ref in zip(results, golden["postprocess"]):
        assert torch.equal(ours["labels"], ref["labels"])
        torch.testing.assert_close(ours["scores"], ref["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours["boxes"], ref["boxes"], rtol=1e-5, atol=1e-3)


def test_model_accepts_tensor_and_list(golden, built):
    model = built[0]
    with torch.no_grad():
        ref = model(NestedTensor(golden["samples_tensors"], golden["samples_mask"]))
        from_list = model(list(golden["images"]))
    torch.testing.assert_close(from_list["pred_logits"], ref["pred_logits"], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        batch = model(golden["samples_tensors"][:1, :, :96, :128])
    assert batch["pred_boxes"].shape == (1, 12, 4)
