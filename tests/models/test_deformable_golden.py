"""Golden parity with the official Deformable DETR (shared/golden/deformable_*.pt): state-dict keys
and shapes (in order), outputs, aux and two-stage encoder outputs, matcher, every loss term,
gradients and post-processing, for the multi-scale, single-scale and box-refine + two-stage
variants, also with the inference fast paths on. Plus the errors for a checkpoint of another variant and for bad flag combinations."""

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

from models import build_model, deformable_config
from models.deformable_detr import build
from util.checkpoint import CheckpointError, load_model_state
from util.config import ModelConfig, resolve
from util.misc import NestedTensor

FIXTURES = ["deformable_tiny.pt", "deformable_single_scale_tiny.pt", "deformable_refine_two_stage_tiny.pt"]


def _args(golden: dict):
    return resolve(golden_args(golden["config"], model="deformable_detr", num_classes=20, attn_impl="pytorch"))


@pytest.fixture(scope="module", params=FIXTURES)
def case(request):
    golden = load_golden(request.param)
    model, criterion, postprocessors = build_model(_args(golden))
    fill_golden_weights(model)
    return golden, model, criterion, postprocessors


def test_state_dict_keys_and_shapes(case):
    golden, model = case[0], case[1]
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, tuple(s)) for k, s in golden["state_dict_shapes"]]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_outputs_losses_grads_postprocess(case):
    golden, model, criterion, postprocessors = case
    model.zero_grad()
    out = model(NestedTensor(golden["samples_tensors"], golden["samples_mask"]))
    for k in ("pred_logits", "pred_boxes"):
        _close(out[k], golden["outputs"][k])
    assert len(out["aux_outputs"]) == len(golden["aux_outputs"])
    for ours, ref in zip(out["aux_outputs"], golden["aux_outputs"]):
        for k in ("pred_logits", "pred_boxes"):
            _close(ours[k], ref[k])
    if golden["enc_outputs"]:
        for k in ("pred_logits", "pred_boxes"):
            _close(out["enc_outputs"][k], golden["enc_outputs"][k])
    else:
        assert "enc_outputs" not in out

    # Officially the `_enc` weights are always present; ours only with two-stage (unused otherwise).
    present = set(golden["losses"])
    assert {k: v for k, v in golden["weight_dict"].items() if k in present} == {
        k: v for k, v in criterion.weight_dict.items() if k in present
    }
    check_against_golden(golden, model, criterion, postprocessors, out)


def test_inference_fast_path_keeps_official_numbers(case):
    golden, model, _, postprocessors = case
    check_inference_fast_path(golden, model, postprocessors)


def test_training_fast_path_keeps_official_gradients(case):
    check_training_fast_path(*case)


def test_two_stage_checkpoint_into_single_scale_model_names_keys():
    two_stage = load_golden("deformable_refine_two_stage_tiny.pt")
    single = load_golden("deformable_single_scale_tiny.pt")
    model_two, _, _ = build_model(_args(two_stage))
    model_single, _, _ = build_model(_args(single))
    with pytest.raises(CheckpointError) as e:
        load_model_state(model_single, model_two.state_dict(), "two_stage.pth")
    msg = str(e.value)
    assert "two_stage.pth" in msg
    assert "unexpected keys: transformer.decoder.bbox_embed.0.layers.0.weight" in msg  # the refinement heads
    assert "transformer.reference_points.weight" in msg  # missing
    assert "shape mismatches" in msg


def test_bad_configurations_raise_clear_errors():
    golden = load_golden("deformable_single_scale_tiny.pt")
    cfg = deformable_config(ModelConfig.from_args(_args(golden)))
    cfg.transformer.nheads = 5
    with pytest.raises(ValueError, match="nheads"):
        build(cfg)
    cfg = deformable_config(ModelConfig.from_args(_args(golden)))
    cfg.transformer.num_feature_levels = 0
    with pytest.raises(ValueError, match="num_feature_levels"):
        build(cfg)
    cfg = deformable_config(ModelConfig.from_args(_args(golden)))
    cfg.masks = True
    with pytest.raises(NotImplementedError, match="--masks"):
        build(cfg)


def test_accepts_plain_tensor_and_list_of_images():
    golden = load_golden("deformable_single_scale_tiny.pt")
    model, _, postprocessors = build_model(_args(golden))
    fill_golden_weights(model)
    images = [torch.randn(3, 64, 80), torch.randn(3, 48, 64)]
    with torch.no_grad():
        out_list = model(images)
        out_tensor = model(torch.randn(2, 3, 64, 64))
    assert out_list["pred_logits"].shape == out_tensor["pred_logits"].shape == (2, 12, 20)
    res = postprocessors["bbox"](out_list, torch.tensor([[64, 80], [48, 64]]))
    assert res[0]["boxes"].shape == (100, 4)
