"""The shared criterion module and the configs around it: official imports keep working, the weight
dict and loss list per model, one source for Deformable DETR's queries / levels / two-stage, and
the matcher's focal alpha fixed at the official 0.25 whatever ``--focal_alpha`` says."""

import dataclasses

import pytest
import torch

from models import build_model, deformable_config, num_classes_from_state_dict
from models.criterion import LossConfig, SetCriterion, build_criterion
from models.deformable_detr import build as build_deformable
from models.detr import DETRConfig
from models.detr import build as build_detr
from models.matcher import HungarianMatcher, MatcherConfig, build_matcher
from util.config import ModelConfig, get_args_parser, resolve

TINY = ["--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim", "32", "--nheads", "2",
        "--enc_layers", "1", "--dec_layers", "3", "--dim_feedforward", "64", "--num_classes", "5",
        "--device", "cpu"]  # fmt: skip


def _args(*extra: str):
    return resolve(get_args_parser().parse_args([*TINY, *extra]))


def test_official_import_is_the_shared_criterion():
    from models.detr import SetCriterion as FromDetr

    assert FromDetr is SetCriterion


def test_build_criterion_weights_and_losses():
    matcher = HungarianMatcher(1, 5, 2)
    detr = build_criterion(LossConfig(), 4, matcher, num_aux=2, masks=True)
    base = {"loss_ce": 1.0, "loss_bbox": 5, "loss_giou": 2, "loss_mask": 1, "loss_dice": 1}
    assert detr.weight_dict == {**base, **{f"{k}_{i}": v for i in (0, 1) for k, v in base.items()}}
    assert detr.losses == ["labels", "boxes", "cardinality", "masks"] and detr.focal_alpha is None
    assert torch.equal(detr.empty_weight, torch.tensor([1, 1, 1, 1, 0.1]))

    cfg = LossConfig(cls_loss_coef=2, focal_alpha=0.3)
    deformable = build_criterion(cfg, 4, matcher, num_aux=0, two_stage=True)
    assert deformable.weight_dict == {"loss_ce": 2, "loss_bbox": 5, "loss_giou": 2} | {
        "loss_ce_enc": 2, "loss_bbox_enc": 5, "loss_giou_enc": 2
    }  # fmt: skip
    assert deformable.focal_alpha == 0.3 and not hasattr(deformable, "empty_weight")


def test_each_model_rejects_the_other_classification_loss():
    with pytest.raises(ValueError, match="softmax cross-entropy"):
        build_detr(DETRConfig(loss=LossConfig(focal_alpha=0.25)))
    cfg = deformable_config(ModelConfig.from_args(_args("--model", "deformable_detr")))
    cfg.loss.focal_alpha = None
    with pytest.raises(ValueError, match="sigmoid focal loss"):
        build_deformable(cfg)


def test_deformable_queries_levels_two_stage_have_one_source():
    args = _args("--model", "deformable_detr", "--num_queries", "7", "--num_feature_levels", "2", "--two_stage",
                 "--with_box_refine")  # fmt: skip
    cfg = deformable_config(ModelConfig.from_args(args))
    assert (cfg.num_queries, cfg.num_feature_levels, cfg.two_stage) == (7, 2, True)
    assert {f.name for f in dataclasses.fields(cfg)}.isdisjoint({"num_queries", "num_feature_levels", "two_stage"})
    with pytest.raises(AttributeError):
        cfg.num_queries = 9  # derived from the transformer's config: set it there
    cfg.transformer.num_queries = 9
    model, _, _ = build_deformable(cfg)
    assert model.num_queries == model.transformer.two_stage_num_proposals == 9
    assert model.num_feature_levels == len(model.input_proj) == model.transformer.level_embed.shape[0] == 2
    assert model.two_stage and model.transformer.two_stage
    cfg.transformer.num_queries = 0
    with pytest.raises(ValueError, match="--num_queries must be >= 1"):
        build_deformable(cfg)


def test_matcher_focal_alpha_is_the_official_constant():
    """``--focal_alpha`` weighs the focal loss only; the official matcher hard-codes alpha 0.25."""
    assert "focal_alpha" not in {f.name for f in dataclasses.fields(MatcherConfig)}
    _, criterion, _ = build_model(_args("--model", "deformable_detr", "--num_feature_levels", "1",
                                        "--focal_alpha", "0.6"))  # fmt: skip
    assert criterion.focal_alpha == 0.6
    assert criterion.matcher.focal and criterion.matcher.focal_alpha == 0.25
    assert not build_model(_args())[1].matcher.focal  # DETR: softmax class cost

    # the matching itself is that of alpha 0.25: compare with an explicit 0.25 matcher
    g = torch.Generator().manual_seed(0)
    out = {"pred_logits": torch.randn(2, 6, 5, generator=g), "pred_boxes": torch.rand(2, 6, 4, generator=g) * 0.5 + 0.2}
    tgt = [{"labels": torch.tensor([1, 4, 2]), "boxes": torch.rand(3, 4, generator=g) * 0.5 + 0.2}] * 2
    explicit = HungarianMatcher(2, 5, 2, focal=True, focal_alpha=0.25)
    for (i, j), (ei, ej) in zip(criterion.matcher(out, tgt), explicit(out, tgt)):
        assert torch.equal(i, ei) and torch.equal(j, ej)
    assert build_matcher(MatcherConfig(2, 5, 2), focal=True).focal_alpha == 0.25


def test_num_classes_from_state_dict():
    assert num_classes_from_state_dict({"class_embed.bias": torch.zeros(6)}) == 5  # DETR: + no-object
    assert num_classes_from_state_dict({"detr.class_embed.bias": torch.zeros(251)}) == 250  # panoptic
    assert num_classes_from_state_dict({"class_embed.0.bias": torch.zeros(91)}) == 91  # Deformable: sigmoid
    assert num_classes_from_state_dict({"backbone.0.body.conv1.weight": torch.zeros(1)}) is None
