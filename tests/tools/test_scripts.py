"""Every script under tools/ and benchmarks/ runs as ``python <folder>/<script>.py`` from any folder
(here: a temporary one, without PYTHONPATH): its ``--help`` works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    p for folder in ("tools", "benchmarks") for p in (ROOT / folder).glob("*.py") if "__main__" in p.read_text()
)


def test_scripts_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in SCRIPTS}
    assert {"tools/predict.py", "tools/visualize_attention.py", "tools/export.py", "tools/visualize.py"} <= names


@pytest.mark.slow
def test_every_script_runs_from_any_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    procs = {  # all at once: most of the time is importing torch
        p: subprocess.Popen(
            [sys.executable, str(p), "--help"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for p in SCRIPTS
    }
    failures = []
    for path, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0 or "usage:" not in out:
            failures.append(f"{path.relative_to(ROOT)}: exit {proc.returncode}\n{err[-1500:]}")
    assert not failures, "\n".join(failures)
