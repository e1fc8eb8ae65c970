"""The configs/ scripts: every one is valid bash naming an existing recipe, runs main.py from the
caller's folder (relative paths are the caller's), and one runs end to end under torchrun (2 CPU
processes) with extra flags passed through and overriding the recipe's."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import TINY

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "configs").glob("*.sh"))


def test_expected_scripts_exist_and_parse():
    names = {p.stem for p in SCRIPTS}
    assert {
        "detr_r50", "detr_r50_dc5", "detr_r101", "detr_r101_dc5", "detr_r50_panoptic",
        "r50_deformable_detr", "r50_deformable_detr_single_scale", "r50_deformable_detr_single_scale_dc5",
        "r50_deformable_detr_plus_iterative_bbox_refinement",
        "r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage",
        "detr_r50_voc_finetune", "deformable_detr_voc_finetune", "dino_4scale", "dino_4scale_24ep", "dino_5scale",
    } <= names  # fmt: skip
    for p in SCRIPTS:
        assert os.access(p, os.X_OK), f"{p.name} is not executable"
        subprocess.run(["bash", "-n", str(p)], check=True)


def test_scripts_keep_the_callers_folder(tmp_path):
    """A stand-in launcher records where it runs and what it is given: the caller's folder, the
    repository's main.py by absolute path, relative flags untouched, user flags last."""
    launcher = tmp_path / "launch"
    launcher.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@"\n')
    launcher.chmod(0o755)
    caller = tmp_path / "work"
    caller.mkdir()
    env = {**os.environ, "LAUNCH": str(launcher)}
    env.pop("EXP_DIR", None)
    for script in SCRIPTS:
        proc = subprocess.run([str(script), "--coco_path", "coco"], cwd=caller, env=env, capture_output=True,
                              text=True, check=True)  # fmt: skip
        cwd, main_py, *argv = proc.stdout.splitlines()
        assert Path(cwd) == caller, script.name
        assert Path(main_py) == ROOT / "main.py", script.name
        assert argv[-2:] == ["--coco_path", "coco"], script.name
        output_dir = argv[argv.index("--output_dir") + 1]
        assert output_dir == f"exps/{script.stem}" and not Path(output_dir).is_absolute(), script.name


@pytest.mark.slow
def test_config_script_under_torchrun(synthetic_coco, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = (
        f"{sys.executable} -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port={port}"
    )
    env = {**os.environ, "LAUNCH": launch, "EXP_DIR": "exp", "OMP_NUM_THREADS": "1"}
    (tmp_path / "coco").symlink_to(synthetic_coco)  # relative paths are the caller's
    tiny = list(TINY)  # later flags win over the recipe's
    cmd = [str(ROOT / "configs" / "r50_deformable_detr_single_scale.sh"), *tiny, "--hidden_dim", "32",
           "--coco_path", "coco", "--epochs", "1", "--batch_size", "2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "backend gloo" in out and "model='deformable_detr'" in out and "num_feature_levels=1" in out
    assert (tmp_path / "exp" / "checkpoint.pth").is_file() and (tmp_path / "exp" / "eval.json").is_file()
