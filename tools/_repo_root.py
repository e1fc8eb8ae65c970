"""Puts the repository root on ``sys.path``, so that ``python tools/x.py`` works from any folder.

Run as a script, a tool has ``tools/`` first on ``sys.path``, not the repository root, so ``import
datasets`` or ``import main`` would fail. Each tool starts with ``if not __package__: import
_repo_root`` (``python -m tools.x``, the tests and other modules import the tools as a package and skip it).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
