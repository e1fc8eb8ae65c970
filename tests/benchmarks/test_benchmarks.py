"""The benchmark scripts work (not how fast) in their CPU modes on tiny shapes, including their
comparisons with the official code: against the real official clones when present
(``$DETR_OFFICIAL_DIR``, default ``../official`` beside the repository; skipped when absent, as in
CI), where the same weights must give the same outputs and set loss in both code bases, and against
a stand-in with the official repositories' layout (``standin``), which runs everywhere.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_DIR = Path(os.environ.get("DETR_OFFICIAL_DIR", ROOT.parent / "official"))
TINY = ["--backbone", "resnet18", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1",
        "--dim_feedforward", "64", "--num_queries", "5"]  # fmt: skip
QUICK = ["--device", "cpu", "--size", "64", "80", "--num_iters", "1", "--warm_iters", "0", "--repeats", "1",
         "--threads", "2", "--no_memory"]  # fmt: skip


def official_clone(name: str) -> Path:
    path = OFFICIAL_DIR / name
    if not (path / "main.py").is_file():
        pytest.skip(f"no official clone at {path} (set DETR_OFFICIAL_DIR)")
    return path


def agreement(printed: str) -> tuple[float, float, float, float]:
    """``(max |d boxes|, max |d probabilities|, official loss, our loss)`` as the benchmark prints them."""
    line = next(x for x in printed.splitlines() if x.startswith("ours (training graph) vs official"))
    d_box, d_prob = (float(part.split()[-1]) for part in line.split(":", 1)[1].split(","))
    loss_line = next(x for x in printed.splitlines() if x.startswith("weighted set loss"))
    official, ours = (float(part.split()[-1]) for part in loss_line.split(":", 1)[1].split(","))
    return d_box, d_prob, official, ours


def test_benchmark_table_against_official_layout(standin: Path, capsys: pytest.CaptureFixture) -> None:
    from benchmarks import benchmark

    rows = benchmark.main(["--model", "detr", "--compare_official", str(standin), "--amp", "none", "bf16",
                           "--no_train", *QUICK, *TINY])  # fmt: skip
    rows += benchmark.main(["--model", "detr", "--compare_official", str(standin), "--no_inference", *QUICK, *TINY])
    printed = capsys.readouterr().out
    expected = {("inference", c, a) for c in ("official", "ours-fast") for a in ("none", "bf16")}
    expected |= {("train", c, "none") for c in ("official", "ours")}
    assert {(r["mode"], r["code"], r["amp"]) for r in rows} == expected
    for r in rows:
        assert r["images_per_s"] > 0 and 0 < r["speedup"] < math.inf and 0 < r["speedup_fp32"] < math.inf
        assert r["cpu_ms"] > 0
        assert math.isnan(r["peak_mib"])  # --no_memory
    assert {r["speedup"] for r in rows if r["code"] == "official"} == {1.0}
    inference = {(r["code"], r["amp"]): r for r in rows if r["mode"] == "inference"}
    assert inference["official", "none"]["d_box"] == 0
    assert inference["ours-fast", "none"]["d_box"] < 1e-5  # the same weights: the same outputs
    assert 0 < inference["ours-fast", "bf16"]["d_box"] < 0.05  # bf16: close, not equal
    assert all(math.isnan(r["d_box"]) for r in rows if r["mode"] == "train")
    assert "official code:" in printed and "ours-fast" in printed and "x same amp" in printed

    rows = benchmark.main(["--model", "deformable_detr", "--with_box_refine", "--no_train", "--eval_optimize",
                           "none", "fast", *QUICK[:-1], *TINY])  # fmt: skip
    assert [(r["amp"], r["code"]) for r in rows] == [("none", "ours"), ("none", "ours-fast")]
    assert rows[0]["peak_mib"] > 0 and rows[0]["d_box"] == 0 and rows[1]["d_box"] < 1e-5  # against "ours"
    with pytest.raises(SystemExit, match="not a clone"):
        benchmark.main(["--compare_official", str(standin / "models"), *QUICK, *TINY])


def test_train_step_loops_against_official_layout(standin: Path, capsys: pytest.CaptureFixture) -> None:
    """``bench_train_step.py --official``: each code base's own main.py loop, each run in a fresh
    process (the official one with ``--official_env``), on the tiny configuration."""
    from benchmarks import bench_train_step

    result = bench_train_step.run(["--config", "tiny", "--official", str(standin), "--iters", "3", "--repeats", "1",
                                   "--num_workers", "0", "--threads", "2", "--official_env", "DETR_BENCH_PROBE=1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert result["official"] > 0 and result["ours"] > 0 and result["speedup"] > 0
    assert "official environment: DETR_BENCH_PROBE=1" in printed and "round 0: ours" in printed


@pytest.mark.parametrize(
    "clone, flags",
    [
        ("detr", ["--model", "detr"]),
        # the official Deformable DETR backbone assumes ResNet-50's channel counts
        (
            "deformable_detr",
            ["--model", "deformable_detr", "--with_box_refine", "--backbone", "resnet50", "--no_train"],
        ),
    ],
)
def test_benchmark_agrees_with_the_official_code(clone: str, flags: list[str], capsys: pytest.CaptureFixture) -> None:
    """The official model built from its clone, our model with its weights: the same outputs and
    loss (fp32), and a table with both code bases (for DETR, training included)."""
    from benchmarks import benchmark

    rows = benchmark.main(["--compare_official", str(official_clone(clone)), *QUICK, *TINY, *flags])
    d_box, d_prob, loss_official, loss_ours = agreement(capsys.readouterr().out)
    assert d_box < 1e-5 and d_prob < 1e-5
    assert loss_ours == pytest.approx(loss_official, rel=1e-5) and loss_official > 0
    modes = ("inference",) if "--no_train" in flags else ("inference", "train")
    assert {(r["mode"], r["code"]) for r in rows} == {
        (m, c) for m in modes for c in ("official", "ours-fast" if m == "inference" else "ours")
    }
    assert all(r["speedup"] > 0 for r in rows)
    assert next(r for r in rows if r["code"] == "ours-fast")["d_box"] < 1e-4  # BatchNorm folded: rounding only


def test_official_op_stand_in_gives_our_values_and_gradients() -> None:
    """The CPU stand-in for Deformable DETR's compiled op (``benchmarks/official.py``), called
    through the official ``MSDeformAttnFunction``, forward and backward, against our op."""
    from benchmarks.bench_ms_deform_attn import make_inputs
    from benchmarks.official import cleanup, load_official
    from models.ops import MS_DEFORM_ATTN_IMPLS

    code = load_official(official_clone("deformable_detr"))
    try:
        function = code["models.ops.functions.ms_deform_attn_func"].MSDeformAttnFunction
        value, shapes, start, loc, attn = make_inputs(
            2, [(4, 5), (2, 3)], 6, 2, 4, 2, torch.float64, torch.device("cpu")
        )
        grads = []
        for op in (lambda *a: function.apply(*a, 64), MS_DEFORM_ATTN_IMPLS["pytorch"]):
            leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
            out = op(leaves[0], shapes, start, leaves[1], leaves[2])
            grads.append([out, *torch.autograd.grad(out, leaves, torch.linspace(-1, 1, out.numel()).view_as(out))])
    finally:
        cleanup()
    for official, ours in zip(*grads, strict=True):
        torch.testing.assert_close(official, ours, rtol=1e-9, atol=1e-12)


def test_training_loops_against_official_layout(standin: Path, tmp_path: Path) -> None:
    """``bench_train_step.py --official``: each code base's own ``main.main`` for one epoch."""
    from benchmarks import bench_train_step

    result = bench_train_step.run(["--config", "tiny", "--official", str(standin), "--iters", "2", "--warmup", "0",
                                   "--repeats", "1", "--num_workers", "0", "--keep", str(tmp_path)])  # fmt: skip
    assert result["official"] > 0 and result["ours"] > 0 and result["speedup"] > 0
    assert sorted(p.name for p in tmp_path.glob("*.log")) == ["official_0.log", "ours_0.log"]
    assert "Start training" in (tmp_path / "official_0.log").read_text()
    assert torch.utils.data.DataLoader.__iter__.__name__ == "__iter__"  # the timing hook is removed
    assert bench_train_step.split_flags(["--lr", "1", "--backbone_weights", "none", "--train_backbone_all"]) == (
        ["--lr", "1"], ["--backbone_weights", "none", "--train_backbone_all"]
    )  # fmt: skip


def test_official_parser_refuses_flags_it_lacks(tmp_path: Path) -> None:
    """The demo configuration's ``--train_scales`` is ours only: the official run is refused by name."""
    from benchmarks import bench_train_step

    with pytest.raises(SystemExit, match="does not accept.*--train_scales"):
        bench_train_step.run(["--config", "demo", "--official", str(official_clone("detr")), "--iters", "3",
                              "--warmup", "0", "--keep", str(tmp_path)])  # fmt: skip


def test_op_and_coco_eval_benchmarks(capsys: pytest.CaptureFixture) -> None:
    """The deformable-attention op (the official PyTorch core beside ours when its clone is
    present) and the COCO backends at tiny sizes."""
    from benchmarks import bench_coco_eval, bench_ms_deform_attn

    deformable = OFFICIAL_DIR / "deformable_detr"
    official = ["--official", str(deformable)] if (deformable / "main.py").is_file() else []
    bench_ms_deform_attn.main(["--level_scale", "16", "--repeats", "1", "--warmup", "1", "--threads", "2", *official])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("decoder", "encoder"))]
    impls = ["pytorch", "official"] if official else ["pytorch"]
    assert [(r[0], r[4]) for r in rows] == [(case, impl) for case in ("decoder", "encoder") for impl in impls]
    assert all(float(r[5]) > 0 and float(r[8]) > 0 and float(r[11]) < 1e-5 for r in rows)  # ms, ms, max|d|
    assert bench_coco_eval.main(["--images", "30", "--dets", "20", "--repeats", "1"]) == 0
    assert "within 1e-06" in capsys.readouterr().out


PEAK_PROBE = """
import sys, torch
sys.path.insert(0, {root!r})
from benchmarks.common import peak_memory_mib
from util.host_memory import keep_freed_memory

def three_tensors():  # 64 MiB at a time
    for _ in range(3):
        torch.ones(16 * 2**20).sum()

if {keep}:
    keep_freed_memory()
for _ in range(5):
    three_tensors()  # with keep, the heap now holds a free 64 MiB block
torch.ones(2**20)  # and something above it
print(peak_memory_mib(three_tensors, torch.device("cpu")))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
@pytest.mark.parametrize("keep", [False, True])
def test_cpu_peak_memory_is_measured_also_where_freed_memory_is_kept(keep: bool) -> None:
    """``peak_memory_mib`` on a CPU: about 64 MiB for a call holding one 64 MiB tensor at a time,
    also in a process that keeps freed memory (main.py's default, and this test suite's process
    once bench_train_step ran): mmap is allowed again for the call (keeping forbids it; a reused,
    split heap block then measured 128 MiB in one run of six)."""
    from util.host_memory import glibc

    if glibc() is None:
        pytest.skip("not glibc")
    code = PEAK_PROBE.format(root=str(ROOT), keep=keep)
    peak = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 56 <= peak <= 80


def test_cpu_peak_memory_gives_the_keep_setting_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """After measuring, a process that keeps freed memory forbids mmap again (and one that does
    not is left with glibc's default): the C library's calls, recorded."""
    from benchmarks import common
    from util.host_memory import M_MMAP_MAX

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, tuple[int, ...]]] = []

        def mallopt(self, *a: int) -> int:
            self.calls.append(("mallopt", a))
            return 1

        def malloc_trim(self, *a: int) -> int:
            self.calls.append(("malloc_trim", a))
            return 1

    for keeping in (True, False):
        libc = Recorder()
        monkeypatch.setattr(common, "glibc", lambda libc=libc: libc)
        monkeypatch.setattr(common, "keeps_freed_memory", lambda keeping=keeping: keeping)
        common.peak_memory_mib(lambda: torch.ones(1), torch.device("cpu"))
        mmap_max = [a[1] for name, a in libc.calls if name == "mallopt" and a[0] == M_MMAP_MAX]
        assert mmap_max == ([65536, 0] if keeping else [65536])


def test_benchmark_runs_dino_with_its_denoising_queries(capsys: pytest.CaptureFixture) -> None:
    """``--model dino``: inference, and training steps that include the denoising queries."""
    from benchmarks import benchmark

    rows = benchmark.main(["--model", "dino", *QUICK, *TINY, "--num_feature_levels", "2", "--dn_number", "2",
                           "--attn_impl", "pytorch"])  # fmt: skip
    assert {r["mode"] for r in rows} == {"inference", "train"} and all(r["images_per_s"] > 0 for r in rows)
    assert "dino" in capsys.readouterr().out
