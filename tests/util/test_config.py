"""util.config refuses every flag the chosen model would ignore, in one line naming it (each
setting declared ``only=`` the models that read it, the mask-loss weights without ``--masks``, the sine scale of a
learned encoding, ``--lr_linear_proj_mult`` without names), and two-stage Deformable DETR without box
refinement, which the official code cannot run either; a checkpoint's stored defaults pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from util import config

ROOT = Path(__file__).resolve().parents[2]


def _non_default(name: str) -> list[str]:
    default = config.default_of(config.all_settings()[name])
    if default is None:  # a --model preset
        default = config.PRESETS["detr"][name]
    return (
        [f"--{name}"] if isinstance(default, bool) else [f"--{name}", str(default / 2 if default < 1 else default + 1)]
    )


def _refusal(flags: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        config.resolve(config.get_args_parser().parse_args([*flags, "--device", "cpu"]))
    return str(e.value.code)


ONLY = [(name, f.metadata["only"]) for name, f in config.all_settings().items() if f.metadata.get("only")]


@pytest.mark.parametrize("name, only", ONLY)
def test_a_flag_of_another_model_is_refused(name, only):
    flags = _non_default(name) + (["--with_box_refine"] if name == "two_stage" else [])
    for other in (m for m in config.MODELS if m not in only):
        message = _refusal(["--model", other, *flags])
        assert message.startswith("error: --") and f"--{name}" in message and f"--model {other} ignores" in message
        assert "\n" not in message
    config.resolve(config.get_args_parser().parse_args(["--model", only[0], *flags, "--device", "cpu"]))


def test_every_model_specific_setting_is_declared():
    """The settings only one model reads, as ``models.detr_config`` / ``deformable_config`` read them."""
    deformable, dino = ("deformable_detr", "dino"), ("dino",)
    assert dict(ONLY) == {
        "num_feature_levels": deformable, "pre_norm": ("detr",), "dec_n_points": deformable,
        "enc_n_points": deformable, "with_box_refine": ("deformable_detr",), "two_stage": ("deformable_detr",),
        "cls_loss_coef": deformable, "eos_coef": ("detr",), "focal_alpha": deformable, "num_select": dino,
        "dn_number": dino, "dn_label_noise_ratio": dino, "dn_box_noise_scale": dino, "dn": ("deformable_detr",),
    }  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mask_loss_coef", "2"], "error: --mask_loss_coef weighs a mask loss: it needs --masks"),
        (["--dice_loss_coef", "2"], "error: --dice_loss_coef weighs a mask loss: it needs --masks"),
        (["--position_embedding", "learned", "--position_embedding_scale", "3"],
         "error: --position_embedding_scale scales the sine encoding: --position_embedding learned ignores it"),
        (["--lr_linear_proj_mult", "0.5"], "error: --lr_linear_proj_mult applies to --lr_linear_proj_names"),
        (["--model", "deformable_detr", "--two_stage"], "error: --two_stage needs --with_box_refine: without it the "
         "official code fails"),
    ],
)  # fmt: skip
def test_other_ignored_flags_are_refused(flags, message):
    assert _refusal(flags).startswith(message)


def test_accepted_combinations():
    for flags in (["--masks", "--mask_loss_coef", "2"], ["--model", "deformable_detr", "--lr_linear_proj_mult", "1"],
                  ["--lr_linear_proj_names", "reference_points", "--lr_linear_proj_mult", "1"],
                  ["--model", "deformable_detr", "--two_stage", "--with_box_refine"]):  # fmt: skip
        config.resolve(config.get_args_parser().parse_args([*flags, "--device", "cpu"]))


@pytest.mark.slow
def test_detr_with_deformable_flags_command_line(tmp_path):
    """``python main.py --model detr --two_stage --with_box_refine`` (before: accepted and trained as
    plain DETR): one line naming both flags, before any data is read."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--model", "detr", "--two_stage", "--with_box_refine",
         "--coco_path", str(tmp_path / "nowhere"), "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "error: --with_box_refine, --two_stage are Deformable DETR options, which --model detr ignores: drop them "
        "or use --model deformable_detr"
    )
