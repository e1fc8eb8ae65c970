"""torchrun with 2 CPU processes (gloo): DistributedDataParallel training of DETR and of DINO (whose
ranks draw their own denoising groups) ends with identical weights on both ranks, and the loss
normalisation uses the global box count."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY, TINY_DINO

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [TINY, TINY_DINO], ids=["detr", "dino"])
def test_torchrun_two_cpu_processes(synthetic_coco, tmp_path, flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", str(ROOT / "tests" / "dist_worker.py"), str(tmp_path),
        *flags, "--coco_path", str(synthetic_coco), "--epochs", "1", "--batch_size", "2",
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "backend gloo" in proc.stdout + proc.stderr
    final = [torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in (0, 1)]
    initial = [torch.load(tmp_path / f"rank{r}_initial.pth", weights_only=True) for r in (0, 1)]
    for k in final[0]:
        assert torch.equal(final[0][k], final[1][k]), f"ranks differ at {k}"
        assert torch.equal(initial[0][k], initial[1][k]), f"ranks started from different weights at {k}"
    # both ranks trained: every weight that learns moved away from the initial ones, on each rank
    learned = [k for k, v in initial[0].items() if v.is_floating_point() and "running_" not in k]
    assert len(learned) > 50
    for r in (0, 1):
        unchanged = [k for k in learned if torch.equal(final[r][k], initial[r][k])]
        assert not unchanged, f"rank {r}: training left {unchanged} at their initial values"
    ckpt = torch.load(tmp_path / "out" / "checkpoint.pth", weights_only=True)
    assert all(torch.equal(ckpt["model"][k], final[0][k]) for k in final[0])  # what rank 0 saved


def test_num_boxes_is_averaged_over_ranks(monkeypatch):
    """SetCriterion normalises by the all-reduced box count / world size (official behaviour)."""
    from models import criterion as criterion_module
    from models.criterion import SetCriterion
    from models.matcher import HungarianMatcher

    monkeypatch.setattr(criterion_module, "is_dist_avail_and_initialized", lambda: True)
    monkeypatch.setattr(criterion_module, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.mul_(3))  # other rank: 2x the boxes
    crit = SetCriterion(3, HungarianMatcher(1, 5, 2), {"loss_bbox": 5}, 0.1, ["boxes"])
    out = {"pred_logits": torch.randn(1, 4, 4), "pred_boxes": torch.rand(1, 4, 4) * 0.4 + 0.3}
    tgt = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]])}]
    loss_dist = crit(out, tgt)["loss_bbox"]
    monkeypatch.setattr(criterion_module, "is_dist_avail_and_initialized", lambda: False)
    monkeypatch.setattr(criterion_module, "get_world_size", lambda: 1)
    loss_local = crit(out, tgt)["loss_bbox"]
    # local: sum / 2 boxes; distributed: sum / (2 * 3 / 2 ranks) = sum / 3
    torch.testing.assert_close(loss_dist * 3, loss_local * 2)
