"""``main.py --model deformable_detr --dn``: DINO's contrastive denoising queries in Deformable
DETR's training. Train through the real command line (the ``_dn`` loss terms logged), resume with
``--resume auto`` bit for bit (the noise comes from the run's checkpointed generators), evaluate the
checkpoint without repeating its flags; without ``--dn`` nothing changes (no new weights, the same
outputs); the denoising flags' rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import TINY, train_resume_eval

import main as main_module

ROOT = Path(__file__).resolve().parents[1]
# The tiny run as a 2-level Deformable DETR (hidden 32: GroupNorm(32)) with 6 denoising groups.
TINY_DN = [
    *TINY, "--model", "deformable_detr", "--num_queries", "10", "--num_feature_levels", "2", "--attn_impl", "pytorch",
    "--dn", "--dn_number", "3",
]  # fmt: skip


def parse(argv: list[str]):
    return main_module.get_args_parser().parse_args(argv)


@pytest.mark.slow
def test_deformable_dn_train_resume_eval(synthetic_coco, tmp_path):
    common = [*TINY_DN, "--coco_path", str(synthetic_coco), "--lr_drop", "1", "--eval_every", "5"]
    full, log = train_resume_eval(common, synthetic_coco, tmp_path)
    assert log[0]["train_loss_ce_dn"] > 0 and log[0]["train_loss_bbox_dn_0"] > 0 and "train_loss_giou_dn" in log[0]
    assert "label_enc.weight" in torch.load(full / "checkpoint.pth", weights_only=True)["model"]


def _tiny_deformable(two_stage: bool, **changes):
    from models import build_model
    from util.config import ModelConfig

    cfg = ModelConfig.preset(
        "deformable_detr", num_classes=4, backbone="resnet18", backbone_weights="none", hidden_dim=32, nheads=2,
        enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=8, num_feature_levels=2, attn_impl="pytorch",
        with_box_refine=two_stage, two_stage=two_stage, **changes,
    )  # fmt: skip
    torch.manual_seed(0)
    return build_model(cfg)


TARGETS = [
    {"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])},
    {"labels": torch.tensor([3]), "boxes": torch.tensor([[0.4, 0.6, 0.3, 0.3]])},
]


@pytest.mark.parametrize("two_stage", [False, True], ids=["single_stage", "two_stage"])
def test_without_dn_nothing_changes(two_stage):
    """Without --dn: the model's weights are those of before (no denoising embedding) and, given
    the same weights, its outputs are the --dn model's outside training (the denoising queries
    exist only in training); with --dn, training decodes the denoising queries apart."""
    plain, plain_criterion, _ = _tiny_deformable(two_stage)
    dn, dn_criterion, _ = _tiny_deformable(two_stage, dn=True, dn_number=3)
    extra = set(dn.state_dict()) - set(plain.state_dict())
    assert {k.split(".")[0] for k in extra} == {"label_enc", "dn_query_pos"}
    assert not any("dn" in k for k in plain_criterion.weight_dict)
    assert {k: v for k, v in dn_criterion.weight_dict.items() if "_dn" not in k} == plain_criterion.weight_dict
    dn.load_state_dict(plain.state_dict(), strict=False)
    plain.eval(), dn.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(images), dn(images, TARGETS)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])

    dn.train()
    out = dn(images, TARGETS)
    assert out["pred_logits"].shape == a["pred_logits"].shape
    assert out["dn_outputs"]["pred_boxes"].shape == (2, 2 * 2 * 6, 4) and out["dn_outputs"]["num_groups"] == 6
    losses = dn_criterion(out, TARGETS)
    assert losses["loss_ce_dn"] > 0 and losses["loss_bbox_dn_0"] > 0
    sum(losses[k] * w for k, w in dn_criterion.weight_dict.items()).backward()
    assert dn.label_enc.weight.grad.abs().sum() > 0 and dn.dn_query_pos.layers[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model", "deformable_detr", "--dn_number", "5"],
            "--dn_number is a DINO option, which --model deformable_detr ignores: drop it or use --model dino, or --dn ",
        ),
        (["--model", "detr", "--dn"], "--dn is a Deformable DETR option"),
        (["--model", "dino", "--dn"], "--dn is a Deformable DETR option, which --model dino ignores"),
        (["--model", "deformable_detr", "--dn", "--num_select", "10"], "--num_select is a DINO option"),
        (["--model", "deformable_detr", "--dn", "--dn_box_noise_scale", "2"], "--dn_box_noise_scale must be in [0, 1]"),
    ],
)
def test_bad_dn_flags_are_one_line_errors(argv, message):
    from util.config import resolve

    with pytest.raises(SystemExit) as e:
        resolve(parse(argv))
    assert message in str(e.value.code) and "\n" not in str(e.value.code)


def test_dn_flags_are_accepted_with_dn():
    from util.config import resolve

    args = resolve(parse(["--model", "deformable_detr", "--dn", "--dn_number", "5", "--dn_label_noise_ratio", "0.2"]))
    assert (args.dn, args.dn_number, args.dn_label_noise_ratio, args.dn_box_noise_scale) == (True, 5, 0.2, 0.4)
    assert not resolve(parse(["--model", "deformable_detr"])).dn


def test_weights_only_dn_checkpoint_loads(tmp_path):
    """A --dn checkpoint without its flags: the weights tell Deformable DETR with --dn (its
    denoising label embedding), not DINO (told by its content queries); strict load."""
    from models import architecture_from_state_dict
    from models.loading import build_model_from_checkpoint

    model, _, _ = _tiny_deformable(True, dn=True, dn_number=3)
    assert architecture_from_state_dict(model.state_dict())["model"] == "deformable_detr"
    torch.save({"model": model.state_dict()}, tmp_path / "dn.pth")
    loaded = build_model_from_checkpoint(str(tmp_path / "dn.pth")).model
    assert loaded.denoising is not None
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
