"""``benchmarks/bench_train_step.py`` runs on a CPU (tiny shapes: that it works, not how fast)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_train_step  # noqa: E402


def test_bench_train_step_runs_every_variant_on_cpu(capsys):
    medians = bench_train_step.run(
        ["--config", "tiny", "--steps", "1", "--repeats", "1", "--warmup", "0", "--threads", "2"]
    )
    assert set(medians) == set(bench_train_step.VARIANTS) and all(s > 0 for s in medians.values())
    out = capsys.readouterr().out
    assert "speed-up" in out and "official" in out and "data pipeline" in out
