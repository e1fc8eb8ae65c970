"""Helpers for the golden parity tests: load a fixture from ``../shared/golden`` (skip when the
folder is absent, fail instead when ``DETR_REQUIRE_GOLDEN=1``, as CI sets it), fill a model's weights
with the fixture's rule, and build args from its config."""

from __future__ import annotations

import argparse
import math
import os
import zlib
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

GOLDEN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REQUIRE_GOLDEN = "DETR_REQUIRE_GOLDEN"  # set (not "0") by .ci/run: a missing fixture fails the suite


def load_golden(name: str) -> dict:
    """The fixture ``name`` of ``GOLDEN_DIR``; when absent, the test is skipped, or failed when the
    environment variable ``DETR_REQUIRE_GOLDEN`` is set, so that CI cannot pass without them."""
    path = GOLDEN_DIR / name
    if not path.is_file():
        if os.environ.get(REQUIRE_GOLDEN, "0") not in ("", "0"):
            pytest.fail(
                f"golden fixture {path} not present, and {REQUIRE_GOLDEN} requires the fidelity checks: "
                f"put the official fixtures in {GOLDEN_DIR} (or unset {REQUIRE_GOLDEN} to skip them)",
                pytrace=False,
            )
        pytest.skip(f"golden fixture {path} not present")
    return torch.load(path, weights_only=True)


def fill_value(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The fixture's deterministic weight for ``key`` (see shared/golden/README.md)."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) + 0.5
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    if key.endswith("weight"):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    return 0.1 * torch.randn(shape, generator=g)


def fill_golden_weights(model: nn.Module) -> None:
    state = model.state_dict()
    new = {k: fill_value(k, tuple(v.shape)) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(new, strict=True)
    model.eval()


def golden_args(config: dict, **overrides: object) -> argparse.Namespace:
    """The project's default arguments, updated with the fixture's official config."""
    from util.config import get_args_parser

    args = get_args_parser().parse_args([])
    for k, v in {**config, **overrides}.items():
        setattr(args, k, v)
    args.backbone_weights = "none"
    return args


def check_against_golden(
    golden: dict,
    model: nn.Module,
    criterion: nn.Module,
    postprocessors: dict,
    out: dict,
    grad_scale_tolerance: dict[str, float] | None = None,
) -> None:
    """Matcher indices (exact), every loss term and the weighted total (1e-5 relative), the
    fixture's gradients, and the box post-processing (labels exact) of ``out`` against ``golden``.
    Backpropagates the total: zero the model's gradients before the forward pass.
    ``grad_scale_tolerance``: parameter-name prefix -> tolerance relative to the gradient's scale
    for those gradients (default 1e-5 of the scale)."""
    main_out = {k: v for k, v in out.items() if k not in ("aux_outputs", "enc_outputs")}
    indices = criterion.matcher(main_out, golden["targets"])
    for (i, j), (gi, gj) in zip(indices, golden["matcher_indices"]):
        assert torch.equal(i, gi) and torch.equal(j, gj)

    losses = criterion(out, golden["targets"])
    assert set(losses) == set(golden["losses"])
    for k, v in golden["losses"].items():
        torch.testing.assert_close(losses[k], v, rtol=1e-5, atol=1e-6)
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    torch.testing.assert_close(total, golden["total_loss"], rtol=1e-5, atol=1e-6)

    total.backward()
    params = dict(model.named_parameters())
    for k, g in golden["grads"].items():
        # A gradient is a sum over every query, layer and position: float32 rounding is relative
        # to the tensor's scale, not to each element (a near-zero element of a tensor whose entries
        # reach hundreds differs by ~1e-5 of that scale with the summation order, which the thread
        # count and the CPU's kernels change). Hence 1e-5 of the scale, as the fixtures' README says.
        scale = max(1.0, float(g.abs().max()))
        relative = next((t for prefix, t in (grad_scale_tolerance or {}).items() if k.startswith(prefix)), 1e-5)
        torch.testing.assert_close(params[k].grad, g, rtol=1e-4, atol=relative * scale, msg=lambda m, k=k: f"{k}: {m}")

    results = postprocessors["bbox"](out, golden["postprocess_target_sizes"])
    for ours, ref in zip(results, golden["postprocess"]):
        assert torch.equal(ours["labels"], ref["labels"])
        torch.testing.assert_close(ours["scores"], ref["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours["boxes"], ref["boxes"], rtol=1e-5, atol=1e-3)  # pixels


def check_inference_fast_path(golden: dict, model: nn.Module, postprocessors: dict) -> None:
    """``models.optimize.optimize_for_inference`` (BatchNorm folded, fused oneDNN convolutions,
    channels-last: what ``main.py --eval`` runs on a CPU) keeps ``golden``'s outputs within the
    golden tolerances (masks: 2e-5) and post-processing; every BatchNorm is folded and every
    backbone convolution fused; ``model`` itself is left untouched."""
    from models.optimize import mkldnn_fusion_available, optimize_for_inference
    from util.misc import NestedTensor

    n_bn = sum(isinstance(m, nn.BatchNorm2d) or type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model, channels_last=True)
    assert fast.options.folded_layers == n_bn > 0
    assert fast.options.fuse == mkldnn_fusion_available() and fast.options.fused_convs in (0, n_bn)
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in fast.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    out = fast(NestedTensor(golden["samples_tensors"], golden["samples_mask"]))
    check_outputs(golden, out)
    results = postprocessors["bbox"](out, golden["postprocess_target_sizes"])
    for ours, ref in zip(results, golden["postprocess"]):
        assert torch.equal(ours["labels"], ref["labels"])
        torch.testing.assert_close(ours["scores"], ref["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours["boxes"], ref["boxes"], rtol=1e-5, atol=1e-3)


def check_outputs(golden: dict, out: dict) -> None:
    """``out``'s logits, boxes (main, auxiliary, two-stage encoder) and masks against ``golden``'s
    (1e-5; masks 2e-5 absolute, 1e-4 relative)."""
    for k in ("pred_logits", "pred_boxes", "pred_masks"):
        if k in golden["outputs"]:
            atol, rtol = (2e-5, 1e-4) if k == "pred_masks" else (1e-5, 1e-5)
            torch.testing.assert_close(out[k], golden["outputs"][k], atol=atol, rtol=rtol, msg=k)
    for ours, ref in zip(out["aux_outputs"], golden["aux_outputs"], strict=True):
        torch.testing.assert_close(ours["pred_boxes"], ref["pred_boxes"], atol=1e-5, rtol=1e-5)
    if golden.get("enc_outputs"):
        torch.testing.assert_close(
            out["enc_outputs"]["pred_boxes"], golden["enc_outputs"]["pred_boxes"], atol=1e-5, rtol=1e-5
        )


def check_training_fast_path(golden: dict, model: nn.Module, criterion: nn.Module, postprocessors: dict) -> None:
    """``models.optimize.fold_frozen_batchnorm_for_training`` (``main.py --fold_frozen_bn``), on a
    copy of ``model``: every frozen BatchNorm folded, the ``state_dict`` unchanged, and the
    outputs, matcher, losses, gradients and post-processing within the golden tolerances, but for
    one ill-conditioned gradient: Deformable DETR's first input projection (1x1 convolution +
    GroupNorm of 4-channel groups over a few positions) amplifies rounding-level changes of the
    backbone features: any change of convolution kernel moves it (channels-last alone: 4.4e-4 of
    its scale on deformable_tiny.pt, the folding the same), so 1e-3 of the scale there."""
    import copy

    from models.optimize import fold_frozen_batchnorm_for_training
    from util.misc import NestedTensor

    folded = copy.deepcopy(model)
    n_frozen = sum(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    assert fold_frozen_batchnorm_for_training(folded) == n_frozen > 0
    folded.train()  # the fixtures' numbers are from eval mode, the same without dropout (they have none)
    assert {k: v.shape for k, v in folded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    folded.zero_grad()
    out = folded(NestedTensor(golden["samples_tensors"], golden["samples_mask"]))
    check_outputs(golden, out)
    check_against_golden(golden, folded, criterion, postprocessors, out, grad_scale_tolerance={"input_proj.": 1e-3})
    check_per_image_backbone(golden, model)


def check_per_image_backbone(golden: dict, model: nn.Module) -> None:
    """``--backbone_per_image`` (``models.per_image.features_per_image``) on a copy of ``model``. The
    fixture's first image fills the padded batch, so its features and every output of it (main,
    auxiliary, two-stage, masks) keep the official numbers; the second image, padded, now goes
    through the backbone alone, and its outputs move: officially they depend on the padding."""
    import copy

    from models.backbone import BackboneBase
    from util.misc import NestedTensor

    assert not golden["samples_mask"][0].any() and golden["samples_mask"][1].any()
    per_image = copy.deepcopy(model).eval()
    backbones = [m for m in per_image.modules() if isinstance(m, BackboneBase)]
    assert len(backbones) == 1
    backbones[0].per_image = True  # what BackboneConfig(per_image=True) builds
    with torch.no_grad():
        out = per_image(NestedTensor(golden["samples_tensors"], golden["samples_mask"]))
    first = {k: v[:1] for k, v in out.items() if isinstance(v, Tensor)}
    first["aux_outputs"] = [{k: v[:1] for k, v in aux.items()} for aux in out["aux_outputs"]]
    if out.get("enc_outputs"):
        first["enc_outputs"] = {k: v[:1] for k, v in out["enc_outputs"].items()}
    reference = {
        "outputs": {k: v[:1] for k, v in golden["outputs"].items()},
        "aux_outputs": [{k: v[:1] for k, v in aux.items()} for aux in golden["aux_outputs"]],
        "enc_outputs": {k: v[:1] for k, v in golden["enc_outputs"].items()} if golden.get("enc_outputs") else None,
    }
    check_outputs(reference, first)
    moved = (out["pred_boxes"][1] - golden["outputs"]["pred_boxes"][1]).abs().max().item()
    assert moved > 1e-4, moved
