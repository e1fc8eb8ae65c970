"""``main.py --model dino`` end to end on the generated data: train through the real command line,
resume with ``--resume auto`` bit for bit (the denoising noise comes from the run's checkpointed
generators), evaluate the checkpoint without repeating its flags, detect with tools/predict.py;
fine-tune to another class count (class heads and the denoising label embedding re-initialised);
DINO flags refused elsewhere; the recipe scripts and hub entries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_DINO, train_resume_eval

import main as main_module

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str]):
    return main_module.get_args_parser().parse_args(argv)


@pytest.mark.slow
def test_dino_train_resume_eval_predict(synthetic_coco, tmp_path):
    common = [*TINY_DINO, "--coco_path", str(synthetic_coco), "--lr_drop", "1", "--eval_every", "5"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    full, log = train_resume_eval(common, synthetic_coco, tmp_path)
    assert log[0]["train_loss_ce_dn"] > 0 and "train_loss_bbox_dn_0" in log[0] and "train_loss_ce_interm" in log[0]
    assert {"AP", "AP50"} <= set(json.loads((full / "eval.json").read_text())["bbox"])

    pred = tmp_path / "pred"  # the tools on a DINO checkpoint: no denoising queries at inference
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "predict.py"), "--checkpoint", str(full / "checkpoint.pth"),
         "--output", str(pred), "--threshold", "0", "--no_drawings", str(synthetic_coco / "val2017")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    detections = json.loads((pred / "predictions.json").read_text())
    assert len(detections) == 6 * 10 * 4  # 6 images x min(--num_select 300, 10 queries x 4 classes)
    assert {d["category_id"] for d in detections} <= {0, 1, 2, 3}


def test_finetune_reinitialises_dino_class_heads_and_label_embedding():
    """--finetune's loader (util.checkpoint.load_finetune_weights) from a 4-class DINO into a
    6-class one: the class heads (decoder and proposals) and the denoising label embedding keep
    their fresh initialisation, every other weight is loaded."""
    from models import build_model
    from util.checkpoint import load_finetune_weights
    from util.config import resolve

    def tiny(num_classes: int):
        return build_model(resolve(parse([*TINY_DINO, "--num_classes", str(num_classes)])))[0]

    source, target = tiny(4), tiny(6)
    notes = "\n".join(load_finetune_weights(target, source.state_dict(), "dino.pth"))
    assert "re-initialised class_embed.0.weight: checkpoint (4, 32), model (6, 32)" in notes
    assert "re-initialised label_enc.weight: checkpoint (5, 32), model (7, 32)" in notes
    assert "re-initialised transformer.enc_out_class_embed.weight" in notes
    assert torch.equal(target.transformer.tgt_embed.weight, source.transformer.tgt_embed.weight)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "detr", "--dn_number", "5"], "--dn_number is a DINO option"),
        (["--model", "deformable_detr", "--num_select", "100"], "--num_select is a DINO option"),
        (["--model", "dino", "--dn_number", "-1"], "--dn_number must be >= 0"),
        (["--model", "dino", "--dn_box_noise_scale", "1.5"], "--dn_box_noise_scale must be in [0, 1]"),
        (["--model", "dino", "--dn_label_noise_ratio", "-0.1"], "--dn_label_noise_ratio must be in [0, 1]"),
        (["--model", "dino", "--two_stage"], "--two_stage is a Deformable DETR option, which --model dino ignores"),
        (["--model", "dino", "--num_feature_levels", "1"], "--num_feature_levels must be >= 2"),
        (["--model", "dino", "--masks"], "--masks is not supported with --model dino"),
    ],
)
def test_bad_dino_flags_are_one_line_errors(argv, message):
    from util.config import resolve

    with pytest.raises(SystemExit) as e:
        resolve(parse(argv))
    assert message in str(e.value.code) and "\n" not in str(e.value.code)


def test_dino_preset_is_the_official_4scale():
    from util.config import resolve

    args = resolve(parse(["--model", "dino"]))
    assert (args.num_queries, args.dim_feedforward, args.lr, args.lr_backbone, args.epochs, args.lr_drop) == (
        900, 2048, 1e-4, 1e-5, 12, 11,
    )  # fmt: skip
    assert (args.dropout, args.cls_loss_coef, args.num_select, args.dn_number) == (0.0, 1.0, 300, 100)
    assert (args.dn_label_noise_ratio, args.dn_box_noise_scale, args.num_feature_levels) == (0.5, 0.4, 4)
    assert args.lr_backbone_names == ["backbone"] and args.lr_linear_proj_names == []


def test_dino_config_scripts_give_valid_settings(tmp_path):
    """configs/dino_*.sh pass main.py flags that resolve: the official schedules and box noise."""
    from util.config import resolve

    launcher = tmp_path / "launch"
    launcher.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    launcher.chmod(0o755)
    seen = {}
    for name in ("dino_4scale", "dino_4scale_24ep", "dino_5scale"):
        proc = subprocess.run([str(ROOT / "configs" / f"{name}.sh"), "--coco_path", "coco"], env={
            **os.environ, "LAUNCH": str(launcher)}, capture_output=True, text=True, check=True)  # fmt: skip
        args = resolve(parse(proc.stdout.splitlines()[1:]))
        seen[name] = (args.model, args.epochs, args.lr_drop, args.batch_size, args.num_feature_levels)
        assert args.dn_box_noise_scale == 1.0 and args.num_queries == 900
    assert seen == {
        "dino_4scale": ("dino", 12, 11, 2, 4),
        "dino_4scale_24ep": ("dino", 24, 20, 2, 4),
        "dino_5scale": ("dino", 12, 11, 1, 5),
    }


def test_hub_entries_build_dino_and_name_the_official_weights():
    import hubconf
    from util.checkpoint import CheckpointError

    model, post = hubconf.dino_5scale(num_classes=3, return_postprocessor=True)
    assert model.transformer.level_embed.shape == (5, 256) and model.label_enc.weight.shape == (4, 256)
    assert model.transformer.tgt_embed.weight.shape[0] == 900 and post.num_select == 300
    with pytest.raises(CheckpointError, match="checkpoint0011_4scale.pth.*drive.google.com"):
        hubconf.dino_4scale(pretrained=True)


def test_training_on_images_with_fewer_tokens_than_queries():
    """900 queries (the preset) on a 64 px image: fewer encoder tokens than queries, the denoising
    attention mask cut to the queries selected; one training forward and loss."""
    from models import build_model
    from util.config import resolve

    args = resolve(parse(["--model", "dino", "--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim",
                          "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "32",
                          "--num_classes", "3", "--num_feature_levels", "2", "--dn_number", "2", "--device", "cpu",
                          "--attn_impl", "pytorch"]))  # fmt: skip
    model, criterion, _ = build_model(args)
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.2, 0.2]])}]
    out = model(torch.randn(1, 3, 64, 64), targets)
    assert out["pred_logits"].shape == (1, 4 * 4 + 2 * 2, 3)  # every token of layer3 (4x4) and layer4 (2x2)
    losses = criterion(out, targets)
    assert losses["loss_ce_dn"] > 0 and all(torch.isfinite(v) for v in losses.values())
