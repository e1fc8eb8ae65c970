"""``benchmarks/gpu_check.py --cpu-tiny``: every part of the GPU check runs (or says why it is
skipped) on tiny shapes on the CPU, against the official-layout stand-in, and leaves both reports;
a failing part is recorded and the next one runs; a part past its time is cut and recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import gpu_check

PARTS = [name for name, _, _ in gpu_check.PARTS]


@pytest.mark.slow
def test_cpu_tiny_mode_writes_every_part(standin: Path, tmp_path: Path) -> None:
    # a budget no loaded machine exhausts: the parts' completion is checked, not their speed
    report = gpu_check.main(["--out", str(tmp_path), "--cpu-tiny", "--official-detr", str(standin),
                             "--official-deformable", str(standin), "--budget-s", "36000"])  # fmt: skip
    written = json.loads((tmp_path / "gpu_report.json").read_text())
    assert written["mode"] == "cpu-tiny" and [p["name"] for p in written["parts"]] == PARTS
    parts = {p["name"]: p for p in written["parts"]}
    assert report["parts"][0]["status"] == "ok"
    for name in ("environment", "op_correctness", "train_step", "inference_speed", "training_speed", "op_speed",
                 "bf16_agreement"):  # fmt: skip
        assert parts[name]["status"] == "ok", (name, parts[name]["error"], parts[name].get("traceback"))
    assert parts["golden"]["status"] == "ok"  # fixtures absent: each row says skipped
    assert parts["compile"]["status"] == parts["official_op"]["status"] == "skipped"  # CPU: said why
    assert all(p["notes"] for p in written["parts"] if p["status"] == "skipped")

    # correctness parts: a row per case, each passing, and their zero-failure targets reached
    assert {(r["dtype"], r["result"]) for r in parts["op_correctness"]["rows"]} == {
        (d, "pass") for d in ("fp32", "bf16", "fp16")
    }
    assert [(r["amp"], r["result"]) for r in parts["train_step"]["rows"]] == [("none", "pass"), ("bf16", "pass")] * 2
    for name in ("op_correctness", "train_step"):
        assert [t["reached"] for t in parts[name]["targets"]] == [True]

    # speed: official, ours and transformers on the same inputs, ratios against the official fp32 row
    inference = parts["inference_speed"]["rows"]
    codes = dict.fromkeys(("detr", "deformable_detr"), ("official", "ours-fast", "hf"))
    if any(n.startswith("deformable_detr: no hf rows") for n in parts["inference_speed"]["notes"]):
        codes["deformable_detr"] = ("official", "ours-fast")  # a conversion transformers refuses: said so
    assert {(r["model"], r["code"], r["amp"]) for r in inference} == {
        (m, c, a) for m in codes for c in codes[m] for a in ("none", "bf16")
    }
    for r in inference:
        assert r["images_per_s"] > 0 and r["x_official_fp32"] > 0
        assert "hf" not in codes[r["model"]] or r["x_hf_same_amp"] > 0
    assert all(r["max_d_boxes"] < 1e-4 for r in inference if r["amp"] == "none")  # same weights: same outputs
    training = parts["training_speed"]["rows"]
    assert [(r["code"], r["amp"]) for r in training] == [("official", "none"), ("ours", "none"),
                                                         ("ours-fast", "bf16")] * 2  # fmt: skip
    targets = [t for name in ("inference_speed", "training_speed") for t in parts[name]["targets"]]
    assert len(targets) == 2 * 3 + 2 and all(t["reached"] in (True, False, None) for t in targets)
    assert all(t["reached"] is not None for t in targets if "official" in t["what"])
    assert {r["impl"] for r in parts["op_speed"]["rows"]} == {"pytorch"}  # the stand-in has no official core
    agreement = parts["bf16_agreement"]
    assert len(agreement["curves"]["fp32"]) == len(agreement["curves"]["bf16"]) == gpu_check.CPU_TINY.agree_iters
    assert all(math.isfinite(x) for c in agreement["curves"].values() for x in c)
    assert agreement["targets"][0]["what"].startswith("bf16 vs fp32 training")

    markdown = (tmp_path / "gpu_report.md").read_text()
    for name in PARTS:
        assert f"## {name}: {parts[name]['status']}" in markdown
    assert "| detr | 1 | official | none |" in markdown and "(target >= 4)" in markdown


def test_a_failing_or_slow_part_is_recorded_and_the_next_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part raising, and one running past its limit, are recorded with the reason; the report is
    written after each part; parts not asked for are listed as skipped."""
    import time

    def broken(check, part):  # type: ignore[no-untyped-def]
        part["rows"].append({"kept": 1})
        raise RuntimeError("CUDA error: an illegal memory access")

    def slow(check, part):  # type: ignore[no-untyped-def]
        time.sleep(30)

    parts = [("environment", 30, gpu_check.part_environment), ("broken", 30, broken), ("slow", 0.5, slow),
             ("after", 30, lambda check, part: part["notes"].append("ran")), ("unasked", 30, broken)]  # fmt: skip
    monkeypatch.setattr(gpu_check, "PARTS", parts)
    args = gpu_check.get_parser().parse_args(["--out", str(tmp_path)])
    args.cpu_tiny, args.golden = False, tmp_path  # the GPU mode's per-part limits, on this CPU
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: True)
    check = gpu_check.Check(args)
    check.device = gpu_check.torch.device("cpu")
    check.run(["environment", "broken", "slow", "after"])
    status = {p["name"]: (p["status"], p["error"]) for p in check.parts}
    assert status["broken"] == ("error", "RuntimeError: CUDA error: an illegal memory access")
    assert status["slow"][0] == "timeout" and "limit" in status["slow"][1]
    assert status["after"][0] == "ok" and status["unasked"][0] == "skipped"
    written = json.loads((tmp_path / "gpu_report.json").read_text())
    assert written["parts"][1]["rows"] == [{"kept": 1}] and "traceback" in written["parts"][1]
    assert "## broken: error" in (tmp_path / "gpu_report.md").read_text()
