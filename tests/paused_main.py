"""Test helper: ``python tests/paused_main.py main.py ARGS...`` runs main.py as its command line
does, but training waits after its first optimizer step (epoch 0, iteration 0) until the file
named in ``$DETR_TEST_SIGNAL_SENT`` exists, printing ``waiting for the test's signal`` first. A
test sends its signal, then creates the file: the run stops after that very step whatever the
machine's speed. A resumed run finds the file and does not wait."""

from __future__ import annotations

import os
import runpy
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RELEASE = "DETR_TEST_SIGNAL_SENT"
MARKER = "waiting for the test's signal"


def pause_after_first_step(real: Callable[..., Iterator], release: Path) -> Callable[..., Iterator]:
    """``engine.train_steps`` waiting for ``release`` after step 0 of epoch 0 (at most 2 minutes)."""

    def train_steps(*a: Any, **k: Any) -> Iterator:
        for it, scalars in real(*a, **k):
            if (a[5], it) == (0, 0) and not release.exists():  # a[5]: the epoch
                print(MARKER, flush=True)
                deadline = time.time() + 120
                while not release.exists() and time.time() < deadline:
                    time.sleep(0.05)
            yield it, scalars

    return train_steps


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import engine

    engine.train_steps = pause_after_first_step(engine.train_steps, Path(os.environ[RELEASE]))
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
