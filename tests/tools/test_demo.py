"""``tools.demo``: the whole run's ETA."""

from __future__ import annotations

from tools.demo import Progress, cpu_has_bf16


def test_progress_eta_covers_the_remaining_epochs_and_evaluations():
    p = Progress(epochs=2, start=0.0, tail_seconds=0.0)
    assert "ETA follows" in p.update("Epoch: [0]  [ 0/10]  eta: 0:00:09", 1.0)
    line = p.update("Epoch: [0]  [ 9/10]  eta: 0:00:00", 10.0)  # 1 s per iteration
    assert "about 0:00:" in line and p.iters_done == 9
    # 10 more iterations + 2 evaluations guessed at 20 iterations each (none seen yet)
    assert line.endswith("about 0:00:50 left")
    line = p.update("Epoch: [1]  [ 0/10]  eta: 0:00:09", 16.0)  # 5 s evaluation + 1 iteration
    assert p.eval_seconds == [5.0] and line.endswith("about 0:00:14 left")  # 9 iterations + 1 evaluation
    assert p.update("Test:  [0/2]", 17.0) is None


def test_demo_detects_bfloat16_units(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert not cpu_has_bf16(str(cpuinfo))
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_bf16(str(cpuinfo))
    assert not cpu_has_bf16(str(tmp_path / "absent"))
