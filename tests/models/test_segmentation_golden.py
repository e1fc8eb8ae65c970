"""Golden parity of panoptic DETR (``DETRsegm``, ResNet-50, hidden 128, ``masks=True``) with the
official implementation: state-dict keys and shapes in order, outputs including ``pred_masks``, and
through the shared ``check_against_golden`` the matcher, exactly the official loss terms
(``loss_mask``, ``loss_dice`` included), the weighted total, gradients and the box post-processor;
the same outputs with the inference fast paths on.
Fixture: ``shared/golden/detr_panoptic_tiny.pt`` (skipped when absent)."""

from __future__ import annotations

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

from util.misc import NestedTensor


@pytest.fixture(scope="module")
def golden() -> dict:
    return load_golden("detr_panoptic_tiny.pt")


@pytest.fixture(scope="module")
def built(golden: dict):
    from models import build_model
    from util.config import resolve

    args = resolve(golden_args(golden["config"], num_classes=20))
    torch.manual_seed(0)
    model, criterion, postprocessors = build_model(args)
    return model, criterion, postprocessors


@pytest.fixture(scope="module")
def run(golden: dict, built):
    model, criterion, _ = built
    fill_golden_weights(model)
    samples = NestedTensor(golden["samples_tensors"], golden["samples_mask"])
    outputs = model(samples)
    return outputs


def test_state_dict_keys_and_shapes(golden: dict, built) -> None:
    model = built[0]
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    theirs = [(k, tuple(s)) for k, s in golden["state_dict_shapes"]]
    assert ours == theirs


def test_outputs(golden: dict, run: dict) -> None:
    for k in ("pred_logits", "pred_boxes", "pred_masks"):
        assert run[k].shape == golden["outputs"][k].shape, k
        torch.testing.assert_close(run[k], golden["outputs"][k], atol=2e-5, rtol=1e-4, msg=k)
    assert len(run["aux_outputs"]) == len(golden["aux_outputs"])
    for ours, theirs in zip(run["aux_outputs"], golden["aux_outputs"]):
        for k in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(ours[k], theirs[k], atol=2e-5, rtol=1e-4)


def test_matcher_losses_grads_postprocess(golden: dict, built, run: dict) -> None:
    """The shared golden check: matcher indices, the exact set of loss terms (masks included) and
    each value, the weighted total, gradients and the box post-processing."""
    model, criterion, postprocessors = built
    assert set(postprocessors) >= {"bbox", "segm"}
    assert criterion.weight_dict == {k: float(v) for k, v in golden["weight_dict"].items()}
    model.zero_grad()
    check_against_golden(golden, model, criterion, postprocessors, run)


def test_segm_postprocess_shapes(golden: dict, built, run: dict) -> None:
    postprocessors = built[2]
    sizes = golden["postprocess_target_sizes"]
    results = postprocessors["bbox"](run, sizes)
    processed = torch.tensor([[96, 128], [64, 100]])
    results = postprocessors["segm"](results, run, sizes, processed)
    for r, (h, w) in zip(results, sizes.tolist()):
        assert r["masks"].shape == (12, 1, h, w) and r["masks"].dtype == torch.uint8


def test_inference_fast_path_keeps_official_numbers(golden: dict, built, run: dict) -> None:
    check_inference_fast_path(golden, built[0], built[2])  # ``run`` filled the golden weights


def test_training_fast_path_keeps_official_gradients(golden: dict, built, run: dict) -> None:
    check_training_fast_path(golden, *built)


def test_freeze_detr_trains_only_mask_head(golden: dict) -> None:
    from models import build_model
    from util.config import resolve

    args = resolve(golden_args(golden["config"], num_classes=20, frozen_weights="x.pth"))
    model = build_model(args)[0]
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"bbox_attention", "mask_head"}
