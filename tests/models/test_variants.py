"""Every model variant builds from command-line flags, runs forward and backward on a tiny CPU
config, and gives finite losses with gradients reaching the heads and the backbone; the flags that
its weights determine are read back from its state dict (``architecture_from_state_dict``)."""

import pytest
import torch

from models import architecture_from_state_dict, build_model
from util.config import get_args_parser, resolve

TINY = ["--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim", "32", "--nheads", "2",
        "--enc_layers", "1", "--dec_layers", "2", "--dim_feedforward", "64", "--num_queries", "6",
        "--num_classes", "5", "--device", "cpu"]  # fmt: skip

VARIANTS = {
    "detr": [],
    "detr_learned_prenorm_noaux": ["--position_embedding", "learned", "--pre_norm", "--no_aux_loss"],
    "detr_dc5_r50": ["--backbone", "resnet50", "--dilation"],
    "detr_from_scratch": ["--train_backbone_all"],
    "detr_masks": ["--masks"],
    "deformable": ["--model", "deformable_detr", "--num_feature_levels", "4"],
    "deformable_single_scale": ["--model", "deformable_detr", "--num_feature_levels", "1"],
    "deformable_single_scale_dc5": ["--model", "deformable_detr", "--num_feature_levels", "1",
                                    "--backbone", "resnet50", "--dilation"],
    "deformable_box_refine": ["--model", "deformable_detr", "--with_box_refine"],
    "deformable_two_stage": ["--model", "deformable_detr", "--with_box_refine", "--two_stage"],
}  # fmt: skip


def _targets(with_masks: bool, size: tuple[int, int]) -> list[dict]:
    t1 = {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2]])}
    t2 = {"labels": torch.tensor([4]), "boxes": torch.tensor([[0.6, 0.4, 0.3, 0.5]])}
    if with_masks:
        for t in (t1, t2):
            t["masks"] = torch.zeros(len(t["labels"]), *size, dtype=torch.bool)
            t["masks"][:, 10:30, 10:40] = True
    return [t1, t2]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_backward(name):
    torch.manual_seed(0)
    args = resolve(get_args_parser().parse_args([*TINY, *VARIANTS[name]]))
    model, criterion, postprocessors = build_model(args)
    read_back = architecture_from_state_dict(model.state_dict(), nheads=args.nheads)
    assert {"model", "num_classes", "hidden_dim", "enc_layers", "dec_layers", "backbone"} <= set(read_back)
    assert {k: getattr(args, k) for k in read_back} == read_back
    if args.model == "deformable_detr":
        assert {"enc_n_points", "dec_n_points", "num_feature_levels", "two_stage"} <= set(read_back)
    model.train()
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    out = model(images)
    assert out["pred_boxes"].shape == (2, args.num_queries, 4)
    losses = criterion(out, _targets(args.masks, (64, 80)))
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    assert torch.isfinite(total)
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    head = [n for n in grads if "class_embed" in n]
    assert head and all(grads[n] is not None for n in head)
    backbone = [n for n in grads if "backbone.0.body.layer4" in n]  # (under "detr." with --masks)
    assert backbone and any(grads[n] is not None and grads[n].abs().sum() > 0 for n in backbone)
    model.eval()
    with torch.no_grad():
        results = postprocessors["bbox"](model(images), torch.tensor([[64, 80], [48, 64]]))
    assert len(results) == 2 and results[0]["boxes"].shape[-1] == 4


def test_stored_settings_contradicting_the_weights_are_named():
    """One reading of a checkpoint's architecture: stored settings fill what the weights do not tell,
    and a stored setting the weights contradict is an error naming both values."""
    from models.loading import checkpoint_settings
    from util.checkpoint import CheckpointError

    args = resolve(get_args_parser().parse_args([*TINY, *VARIANTS["deformable_box_refine"]]))
    state = build_model(args)[0].state_dict()
    stored = {"model": "deformable_detr", "nheads": 2, "dilation": False, "dec_n_points": 4}
    settings, official = checkpoint_settings({"model": state, "args": stored}, "ckpt.pth")
    assert not official and settings["num_classes"] == 5 and settings["dec_n_points"] == 4
    with pytest.raises(CheckpointError, match=r"ckpt.pth: --dec_layers 6 in its settings but 2 in its weights"):
        checkpoint_settings({"model": state, "args": {**stored, "dec_layers": 6}}, "ckpt.pth")
