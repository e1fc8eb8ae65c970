"""The README's Python snippets run as written from a folder outside the checkout (issue 22 item 6),
with stand-ins for what they name: the checkout for ``/path/to/this/repo``, a DETR-R50 checkpoint of
20 classes with random weights for ``exps/voc/checkpoint.pth``, a small ``image.jpg``, and the
checkout instead of GitHub for ``torch.hub.load("facebookresearch/detr", ...)`` (no network here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# Excerpts of a file rather than programs (an indented class field): not run.
FRAGMENT = re.compile(r"^\s")
OFFLINE_HUB = """import torch

_load = torch.hub.load


def _offline(repo, model, *args, source="github", pretrained=False, **kwargs):
    if source == "github":  # no network here: the same entry of the checkout, random weights
        repo, source, pretrained = {root!r}, "local", False
    return _load(repo, model, *args, source=source, pretrained=pretrained, **kwargs)


torch.hub.load = _offline
"""


def readme_snippets() -> list[str]:
    """The ```python blocks of README.md, less the indentation of their fences (list items)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", text, flags=re.S | re.M)
    return ["".join(line[len(indent) :] + "\n" for line in body.splitlines()) for indent, body in blocks]


def test_snippets_are_found():
    snippets = readme_snippets()
    runnable = [s for s in snippets if not FRAGMENT.match(s)]
    assert len(snippets) >= 4 and len(runnable) >= 3
    assert any('sys.path.insert(0, "/path/to/this/repo")' in s for s in runnable)


@pytest.mark.slow
def test_readme_snippets_run_from_another_folder(tmp_path):
    import hubconf

    (tmp_path / "exps" / "voc").mkdir(parents=True)
    torch.save({"model": hubconf.detr_resnet50(num_classes=20).state_dict()}, tmp_path / "exps/voc/checkpoint.pth")
    Image.new("RGB", (96, 64), (120, 80, 40)).save(tmp_path / "image.jpg")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    failures = []
    for k, snippet in enumerate(s for s in readme_snippets() if not FRAGMENT.match(s)):
        code = snippet.replace("/path/to/this/repo", str(ROOT))
        if 'torch.hub.load("facebookresearch/detr"' in code:
            code = OFFLINE_HUB.format(root=str(ROOT)) + code
        (tmp_path / f"snippet{k}.py").write_text(code)
        proc = subprocess.run([sys.executable, f"snippet{k}.py"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        if proc.returncode != 0:
            failures.append(f"snippet {k}:\n{snippet}\n{proc.stderr[-2000:]}")
    assert not failures, "\n".join(failures)
