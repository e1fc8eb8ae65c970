"""The official entry points, called as forks, notebooks and the detectron2 wrapper call them, and
the shape of the code base: settings declared once, no module importing ``main``, no import from
a lower layer to a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import datasets
import main
import models
from util import config

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ["--num_classes", "91", "--backbone_weights", "none"]
VARIANTS = {
    "detr_r50": [],
    "detr_r50_dc5": ["--dilation"],
    "detr_r101": ["--backbone", "resnet101"],
    "detr_panoptic": ["--masks"],
    "deformable": ["--model", "deformable_detr"],
    "deformable_single_scale": ["--model", "deformable_detr", "--num_feature_levels", "1"],
    "deformable_single_scale_dc5": ["--model", "deformable_detr", "--num_feature_levels", "1", "--dilation"],
    "deformable_refine": ["--model", "deformable_detr", "--with_box_refine"],
    "deformable_two_stage": ["--model", "deformable_detr", "--with_box_refine", "--two_stage"],
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_build_model_from_the_official_parser(name):
    """``args = main.get_args_parser().parse_args([...]); models.build_model(args)``, the presets of
    ``--model`` left as ``None`` by the parser."""
    args = main.get_args_parser().parse_args([*OFFLINE, *VARIANTS[name]])
    model, criterion, postprocessors = models.build_model(args)
    deformable = "deformable" in name
    assert type(model).__name__ == ("DeformableDETR" if deformable else "DETRsegm" if "panoptic" in name else "DETR")
    assert (model.num_queries if not name.endswith("panoptic") else model.detr.num_queries) == (
        300 if deformable else 100
    )
    assert set(postprocessors) >= {"bbox"} and criterion.num_classes == 91


def test_build_dataset_from_the_official_parser(synthetic_coco):
    args = main.get_args_parser().parse_args(["--coco_path", str(synthetic_coco)])
    dataset = datasets.build_dataset("val", args)
    assert len(dataset) == 6 and datasets.get_coco_api_from_dataset(dataset) is not None


def test_official_flags_keep_their_defaults():
    args = main.get_args_parser().parse_args([])
    official = {"lr_backbone_names": None, "lr_linear_proj_mult": 0.1, "batch_size": 2, "weight_decay": 1e-4,
                "clip_max_norm": 0.1, "backbone": "resnet50", "dilation": False, "position_embedding": "sine",
                "enc_layers": 6, "dec_layers": 6, "hidden_dim": 256, "dropout": None, "nheads": 8, "pre_norm": False,
                "masks": False, "aux_loss": True, "set_cost_bbox": 5, "set_cost_giou": 2, "mask_loss_coef": 1,
                "dice_loss_coef": 1, "bbox_loss_coef": 5, "giou_loss_coef": 2, "eos_coef": 0.1, "dataset_file": "coco",
                "output_dir": "", "seed": 42, "resume": "", "start_epoch": 0, "eval": False, "num_workers": 2,
                "world_size": 1, "dist_url": "env://", "num_feature_levels": 4, "dec_n_points": 4, "enc_n_points": 4,
                "with_box_refine": False, "two_stage": False, "cls_loss_coef": None, "focal_alpha": 0.25}  # fmt: skip
    assert {k: getattr(args, k) for k in official} == official
    resolved = {m: config.resolve(main.get_args_parser().parse_args(["--model", m])) for m in config.MODELS}
    assert (resolved["detr"].lr, resolved["detr"].lr_backbone, resolved["detr"].epochs, resolved["detr"].lr_drop) == (
        1e-4, 1e-5, 300, 200)  # fmt: skip
    deformable = resolved["deformable_detr"]
    assert (deformable.lr, deformable.num_queries, deformable.dim_feedforward, deformable.set_cost_class) == (
        2e-4, 300, 1024, 2.0)  # fmt: skip
    # dropout and the class loss weight are presets since DINO (0.0 and 1.0): the official values stay
    assert all((resolved[m].dropout, resolved[m].cls_loss_coef) == (0.1, 2.0) for m in ("detr", "deformable_detr"))


def test_each_setting_is_declared_once_and_the_parser_follows():
    """Every field of the four parts is a flag with its help; the parser has no other flag; names are unique."""
    names = [f.name for part in config.PARTS for f in config.settings_of(part)]
    assert len(names) == len(set(names))
    parser = main.get_args_parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == set(names)
    for a in parser._actions:
        assert a.help and "\n" not in a.help and len(a.help) <= 160, a.dest
    assert set(config.PRESETS["detr"]) == set(config.PRESETS["deformable_detr"])
    assert all(config.all_settings()[k].default is None for k in config.PRESETS["detr"])


def test_given_settings_and_saved_settings():
    assert config.given_settings(["--lr", "1e-4", "--no_aux_loss", "--coco_path", "x"]) == {
        "lr",
        "aux_loss",
        "coco_path",
    }
    saved = config.saved(config.resolve(main.get_args_parser().parse_args(["--output_dir", "o", "--lr", "3"])))
    assert saved["lr"] == 3 and "output_dir" not in saved and "resume" not in saved and saved["train_scales"][0] == 480


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "detr", "--two_stage"], "--two_stage is a Deformable DETR option"),
        (["--model", "deformable_detr", "--two_stage"], "--two_stage needs --with_box_refine"),
        (["--hidden_dim", "30", "--nheads", "8"], "--hidden_dim (30) must be divisible by --nheads (8)"),
        (["--grad_accum_steps", "0"], "--grad_accum_steps must be >= 1"),
        (["--max_bad_images", "2"], "--max_bad_images is a fraction"),
        (["--frozen_weights", "x.pth"], "--frozen_weights trains only the mask head"),
    ],
)
def test_bad_settings_name_the_flag(flags, message):
    with pytest.raises(SystemExit) as e:
        config.resolve(main.get_args_parser().parse_args(flags))
    assert message in str(e.value.code)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_layers():
    """util < models < datasets < engine/hubconf < tools/benchmarks/main: nothing imports upwards,
    and only run_with_submitit.py imports main."""
    higher = {"util": {"models", "datasets", "engine", "hubconf", "tools", "main", "benchmarks"},
              "models": {"datasets", "engine", "hubconf", "tools", "main", "benchmarks"},
              "datasets": {"engine", "hubconf", "tools", "main", "benchmarks"}}  # fmt: skip
    problems = []
    for package, forbidden in higher.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = _imports(path) & forbidden
            if bad:
                problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    scanned = [
        *ROOT.glob("*.py"),
        *(p for d in ("util", "models", "datasets", "tools", "benchmarks") for p in (ROOT / d).rglob("*.py")),
    ]
    for path in scanned:
        if path.name != "run_with_submitit.py" and "main" in _imports(path):
            problems.append(f"{path.relative_to(ROOT)} imports main")
    assert not problems, problems
