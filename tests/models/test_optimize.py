"""models/optimize.py beyond the golden parity tests (which run every fixture with the fp32 fast
paths on, see ``golden.check_inference_fast_path``): learning BatchNorm folded in eval mode only,
the fused convolutions' fallback off oneDNN, the prepared model refuses training, and
``main.py``'s evaluation entry point."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
from golden import golden_args
from torch import nn

from models import build_model
from models.optimize import (
    InferenceModel,
    fold_batchnorm,
    inference_model_from_args,
    mkldnn_fusion_available,
    optimize_for_inference,
)
from util.config import resolve


@pytest.fixture(scope="module")
def demo_like_model() -> nn.Module:
    """The demo's kind of backbone (--train_backbone_all: learning BatchNorm), with the running
    statistics of a trained model, in eval mode."""
    config = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 1}
    args = resolve(golden_args(config, num_classes=3, num_queries=5, dim_feedforward=32, train_backbone_all=True))
    torch.manual_seed(0)
    model = build_model(args)[0]
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def test_learning_batchnorm_is_folded_in_eval_mode(demo_like_model: nn.Module) -> None:
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ref = demo_like_model(images)
    fast = optimize_for_inference(demo_like_model)
    assert fast.options.folded_layers == 20 and fast.options.channels_last  # 1 + 8 x 2 + 3 downsample in ResNet-18
    assert fast.options.fused_convs == (20 if mkldnn_fusion_available() else 0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    out = fast(images)
    torch.testing.assert_close(out["pred_boxes"], ref["pred_boxes"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pred_logits"], ref["pred_logits"], atol=1e-5, rtol=1e-5)
    # float64 is not a oneDNN type: the fused blocks fall back to separate operations
    with torch.no_grad():
        ref64 = copy.deepcopy(demo_like_model).double()(images.double())
    out64 = copy.deepcopy(fast).double()(images.double())
    assert out64["pred_boxes"].dtype == torch.float64
    torch.testing.assert_close(out64["pred_boxes"], ref64["pred_boxes"], atol=1e-8, rtol=1e-7)
    training = optimize_for_inference(demo_like_model, fold_bn=False).model.train(True)
    assert fold_batchnorm(training) == 0  # batch statistics in training mode: nothing to fold


def test_prepared_model_refuses_training_and_main_entry_point(demo_like_model: nn.Module) -> None:
    fast = optimize_for_inference(demo_like_model)
    with pytest.raises(RuntimeError, match="cannot be trained"):
        fast.train()
    fast.eval()  # allowed
    assert not demo_like_model.training and all(p.requires_grad for p in demo_like_model.parameters())

    def args(mode: str) -> argparse.Namespace:
        return argparse.Namespace(eval_optimize=mode, amp="none")

    assert inference_model_from_args(demo_like_model, args("none")) is demo_like_model
    prepared = inference_model_from_args(demo_like_model, args("fast"))
    assert isinstance(prepared, InferenceModel) and prepared.options.fold_bn and not prepared.options.compile
    with pytest.raises(ValueError, match="eval_optimize"):
        inference_model_from_args(demo_like_model, args("fastest"))
    with pytest.raises(ValueError, match="bf16"):
        optimize_for_inference(demo_like_model, amp="fp16")  # a GPU option
    fp16 = argparse.Namespace(eval_optimize="fast", amp="fp16")  # main.py --amp fp16 on a CPU evaluates as before
    assert inference_model_from_args(demo_like_model, fp16) is demo_like_model


def test_training_fold_leaves_learning_batchnorm_and_unfolds_for_inference(demo_like_model: nn.Module) -> None:
    """``fold_frozen_batchnorm_for_training`` folds frozen BatchNorm only (the demo's learning one
    stays as it is); a folded model survives ``deepcopy`` (EMA) and is prepared for inference
    from its plain classes, the original staying folded; Bottleneck blocks (ResNet-50) fold too."""
    from models.optimize import fold_frozen_batchnorm_for_training, unfold_frozen_batchnorm

    learning = copy.deepcopy(demo_like_model)
    assert fold_frozen_batchnorm_for_training(learning) == 0
    config = {"backbone": "resnet50", "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 1}
    torch.manual_seed(0)
    model = build_model(resolve(golden_args(config, num_classes=3, num_queries=5, dim_feedforward=32)))[0].eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(images)
    folded = copy.deepcopy(model)
    assert fold_frozen_batchnorm_for_training(folded) == 53  # ResNet-50: 1 + 16 x 3 + 4 downsample
    ema = copy.deepcopy(folded)
    assert type(ema.backbone[0].body.layer1[0]).__name__ == "_FoldedBottleneck"
    with torch.no_grad():
        for m in (folded, ema):
            torch.testing.assert_close(m(images)["pred_boxes"], ref["pred_boxes"], atol=1e-5, rtol=1e-5)
    fast = optimize_for_inference(folded)
    assert fast.options.folded_layers == 53
    torch.testing.assert_close(fast(images)["pred_boxes"], ref["pred_boxes"], atol=1e-5, rtol=1e-5)
    assert type(folded.backbone[0].body).__name__ == "_FoldedStemBody"  # the original keeps its fold
    assert unfold_frozen_batchnorm(folded) == 17 and fold_frozen_batchnorm_for_training(folded) == 53
