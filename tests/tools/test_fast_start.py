"""The tools start fast and behave alike (issue 22 item 6): ``--help`` and bad arguments are
answered without importing torch (checked structurally: ``'torch' not in sys.modules`` after the
command ran in a fresh interpreter, never by timing), and ``tools/visualize.py`` creates its output
folder as ``tools/predict.py`` does, printing progress and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import visualize

ROOT = Path(__file__).resolve().parents[2]

# Runs a script (as ``python tools/x.py``: its folder first on sys.path) or a module (as ``python -m``)
# with the given arguments, then prints whether torch was imported.
PROBE = """
import runpy, sys
target, args = sys.argv[1], sys.argv[2:]
if target.endswith(".py"):
    sys.path[0] = target.rsplit("/", 1)[0]
    sys.argv = [target, *args]
    run = lambda: runpy.run_path(target, run_name="__main__")
else:
    sys.path[0] = {root!r}
    sys.argv = [target, *args]
    run = lambda: runpy.run_module(target, run_name="__main__", alter_sys=True)
try:
    run()
except SystemExit as e:
    print("exit", e.code)
print("torch imported:", "torch" in sys.modules)
"""

COMMANDS = {
    "predict --help": ["tools/predict.py", "--help"],
    "predict bad argument": [
        "tools/predict.py",
        "--checkpoint",
        "c.pth",
        "--output",
        "o",
        "x.jpg",
        "--batch_size",
        "x",
    ],
    "visualize --help": ["tools/visualize.py", "--help"],
    "visualize missing data": ["tools/visualize.py", "--checkpoint", "c.pth", "--coco_path", "nowhere"],
    "visualize_attention --help": ["tools/visualize_attention.py", "--help"],
    "visualize_panoptic --help": ["tools/visualize_panoptic.py", "--help"],
    "plot_logs --help": ["tools/plot_logs.py", "--help"],
    "demo --help": ["tools/demo.py", "--help"],
    "export --help": ["tools/export.py", "--help"],
    "export bad argument": ["tools/export.py", "--checkpoint", "c.pth", "--output", "m.onnx", "--format", "tflite"],
    "convert_hf --help": ["tools/convert_hf.py", "--help"],
    "coco_eval --help": ["datasets.coco_eval", "--help"],
    "coco_eval of a detection file": ["datasets.coco_eval", "--gt", "gt.json", "--results", "dt.json"],
    "check --help": ["datasets.check", "--help"],
}


@pytest.mark.slow
def test_help_and_bad_arguments_do_not_import_torch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    (tmp_path / "gt.json").write_text(json.dumps({
        "images": [{"id": 1, "width": 10, "height": 10, "file_name": "a.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "x"}],
    }))  # fmt: skip
    (tmp_path / "dt.json").write_text(
        json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9}])
    )
    procs = {}
    for name, (target, *args) in COMMANDS.items():
        target = str(ROOT / target) if target.endswith(".py") else target
        code = PROBE.format(root=str(ROOT))
        procs[name] = subprocess.Popen([sys.executable, "-c", code, target, *args], cwd=tmp_path, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    failures = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        if "torch imported: False" not in out or ("--help" in name and "usage:" not in out):
            failures.append(f"{name}: {out[-800:]}{err[-1500:]}")
        if "bad argument" in name and "exit 2" not in out:
            failures.append(f"{name}: not refused by argparse: {out[-800:]}{err[-800:]}")
        if "detection file" in name and "AP50  1.0000" not in out:
            failures.append(f"{name}: {out[-800:]}{err[-800:]}")
        if "missing data" in name and "error: --coco_path nowhere: no annotation file" not in out:
            failures.append(f"{name}: {out[-800:]}{err[-800:]}")
    assert not failures, "\n".join(failures)


def test_visualize_creates_its_output_folder(tiny_checkpoints, synthetic_coco, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "grid.png"
    argv = ["--checkpoint", str(tiny_checkpoints["detr"]), "--coco_path", str(synthetic_coco), "--num_images", "2"]
    assert visualize.main([*argv, "--out", str(out)]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # one line naming the checkpoint, no folder made for nothing
        visualize.main(["--checkpoint", str(tmp_path / "none.pth"), "--coco_path", str(synthetic_coco),
                        "--out", str(tmp_path / "other" / "grid.png")])  # fmt: skip
    assert str(e.value.code).startswith("error: ") and "none.pth" in str(e.value.code)
    assert not (tmp_path / "other").exists()
