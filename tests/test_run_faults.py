"""Runs that stop cleanly and never lose anything (issue 21), through ``python main.py``: one run per
``--output_dir`` (lock, another run's checkpoints refused), checkpoints with the umask's permissions,
resume with changed frozen parts, ``log.txt`` checked on resume, low free space and a full disk,
Ctrl-C, and a hung torchrun rank ended by ``--dist_timeout``. One finished 1-epoch tiny run is
shared; each test works on a copy of it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from paused_main import MARKER
from test_preemption import _children, _free_port, _popen, _rank_of, paused_main, signal_then_release, signal_when
from tiny import TINY

import main as main_module
from util import config
from util.checkpoint import RunLock

ROOT = Path(__file__).resolve().parents[1]
# 12 images / batch 4 = 3 iterations per epoch
RUN = ["--epochs", "1", "--lr_drop", "100"]


def run_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, "--coco_path", str(data), "--output_dir", str(out), *RUN, *extra]


def run_main(argv: list[str]) -> dict:
    """``python main.py argv`` in this process (the flags given are those of ``argv``)."""
    args: Namespace = main_module.get_args_parser().parse_args(argv)
    return main_module.main(args, given=config.given_settings(argv))


def command(*argv: str, fault: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``python main.py argv`` (with ``tests/fault_run.py``'s ``fault`` injected) as a subprocess."""
    script = ROOT / ("tests/fault_run.py" if fault else "main.py")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", **({"FAULT": fault} if fault else {})}
    return subprocess.run([sys.executable, str(script), *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, **kwargs)  # fmt: skip


def last_line(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def finished(synthetic_coco, tmp_path_factory) -> Path:
    """A finished 1-epoch run, its files created under umask 002."""
    out = tmp_path_factory.mktemp("finished") / "run"
    mask = os.umask(0o002)
    try:
        run_main(run_args(synthetic_coco, out))
    finally:
        os.umask(mask)
    return out


def copy_run(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("checkpoint_best.pth", "eval"))
    return out


@pytest.mark.slow
def test_checkpoints_take_the_umask(finished):
    """umask 002 -> 0664, as for any file the user creates (mkstemp's 0600 before)."""
    for name in ("checkpoint.pth", "checkpoint_prev.pth", "checkpoint_best.pth"):
        assert (finished / name).stat().st_mode & 0o777 == 0o664, name
    assert not (finished / RunLock.NAME).exists()  # the lock goes with the run


@pytest.mark.slow
def test_one_run_per_output_dir(finished, synthetic_coco, tmp_path, capsys):
    """A second run on a folder in use stops in one line naming the holder, touching nothing (not the
    first run's checkpoint being written); a new run (no
    --resume) in a finished run's folder refuses, naming --resume auto and --overwrite_output_dir;
    with --overwrite_output_dir the previous run's files are removed first (listed)."""
    out = copy_run(finished, tmp_path)
    before = (out / "checkpoint.pth").stat().st_mtime_ns
    lock = RunLock(out).acquire()  # a run in progress: this process, writing a checkpoint
    writing = out / ".checkpoint.pth.abc123.tmp"
    writing.write_bytes(b"0" * 100)
    try:
        busy = command(*run_args(synthetic_coco, out, "--resume", "auto"))
    finally:
        lock.release()
    assert busy.returncode == 1 and writing.exists()  # the other run's save is left alone
    writing.unlink()
    assert last_line(busy).startswith(f"error: --output_dir {out} is in use by another run (host ")
    assert f"PID {os.getpid()}" in last_line(busy) and "Traceback" not in busy.stderr

    with pytest.raises(SystemExit) as e:  # a new run
        run_main(run_args(synthetic_coco, out))
    message = str(e.value)
    assert message.startswith(f"error: --output_dir {out} holds another run's files (checkpoint.pth")
    assert "--resume auto" in message and "--overwrite_output_dir" in message
    assert (out / "checkpoint.pth").stat().st_mtime_ns == before  # nothing touched
    assert json.loads((out / "log.txt").read_text().splitlines()[0])["epoch"] == 0

    # Deliberately over: removed, listed (stopped at the data check, before training: nothing else to test here)
    with pytest.raises(SystemExit):
        run_main(run_args(synthetic_coco, out, "--overwrite_output_dir", "--coco_path", str(tmp_path / "none")))
    assert "--overwrite_output_dir: removed the previous run's checkpoint.pth" in capsys.readouterr().out
    assert not list(out.glob("checkpoint*.pth")) and not (out / "log.txt").exists()


def optimizer_steps(ckpt: dict) -> dict[str, int]:
    """Parameter name -> Adam step count in a saved checkpoint."""
    names = [n for group in ckpt["optimizer_param_names"] for n in group]
    ids = [i for group in ckpt["optimizer"]["param_groups"] for i in group["params"]]
    state = ckpt["optimizer"]["state"]
    return {n: int(state[i]["step"]) for n, i in zip(names, ids) if i in state}


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, frozen",
    [(["--freeze_backbone"], ("backbone.",)), (["--lr_backbone", "0", "--freeze_encoder"], ("backbone.", "transformer.encoder."))],
    ids=["freeze_backbone", "lr_backbone_0_freeze_encoder"],
)  # fmt: skip
def test_resume_with_changed_frozen_parts(finished, synthetic_coco, tmp_path, capsys, flags, frozen):
    """--resume auto with flags that change the parameter groups: the parameters still trained keep
    their Adam state (3 steps, then 3 more), the frozen ones leave the optimizer. Also: a stale lock
    (a killed run's) is taken over with a warning, and log.txt's truncated last line is removed
    with a warning before training."""
    out = copy_run(finished, tmp_path)
    (out / RunLock.NAME).write_text("host gone, PID 999999, started 2026-01-01 00:00:00 UTC\n")
    with open(out / "log.txt", "a") as f:
        f.write('{"train_loss": 1.2, "epo')  # a write cut short
    run_main(run_args(synthetic_coco, out, "--resume", "auto", "--epochs", "2", *flags))
    text = capsys.readouterr().out
    assert "took over the stale lock" in text and "PID 999999" in text
    assert "log.txt: removed its last line, cut short by an interrupted write" in text
    assert text.index("removed its last line") < text.index("Start training")
    warning = next(line for line in text.splitlines() if "no longer trained: their optimizer state is dropped" in line)
    assert warning.startswith("warning: --") and all(f in warning for f in flags if f.startswith("--"))
    before = optimizer_steps(torch.load(finished / "checkpoint.pth", weights_only=True))
    after = optimizer_steps(torch.load(out / "checkpoint.pth", weights_only=True))
    assert set(before) - set(after) == {n for n in before if n.startswith(frozen)} != set()
    assert set(after) <= set(before) and all(after[n] == before[n] + 3 == 6 for n in after)
    assert [e["epoch"] for e in map(json.loads, (out / "log.txt").read_text().splitlines())] == [0, 1]


@pytest.mark.slow
def test_resume_refusals_before_training(finished, synthetic_coco, tmp_path):
    """An older checkpoint (no parameter names) resumed with --freeze_backbone: one line naming the
    flag; a log.txt whose middle line is broken: one line naming log.txt and the line."""
    out = copy_run(finished, tmp_path)
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    del ckpt["optimizer_param_names"]
    torch.save(ckpt, out / "checkpoint.pth")
    with pytest.raises(SystemExit) as e:
        run_main(run_args(synthetic_coco, out, "--resume", "auto", "--epochs", "2", "--freeze_backbone"))
    assert str(e.value).startswith(f"error: resuming {out / 'checkpoint.pth'} with --freeze_backbone True:")
    assert "--finetune" in str(e.value)

    lines = (out / "log.txt").read_text().splitlines()
    (out / "log.txt").write_text("\n".join(["{not json", *lines]) + "\n")
    with pytest.raises(SystemExit) as e:
        run_main(run_args(synthetic_coco, out, "--resume", "auto", "--epochs", "2"))
    assert str(e.value) == f"error: {out / 'log.txt'} line 1 is not a JSON object (one per epoch): repair or remove that line, then resume"  # fmt: skip


@pytest.mark.slow
def test_disk_too_small_and_full(finished, synthetic_coco, tmp_path, monkeypatch, capsys):
    """Room for less than one checkpoint: an error before training. A save failing with ENOSPC (in
    a subprocess): one line saying which checkpoints are kept; they are unchanged."""
    out = copy_run(finished, tmp_path)
    with monkeypatch.context() as m:
        usage = shutil.disk_usage
        m.setattr(shutil, "disk_usage", lambda path: usage(path)._replace(free=10**6))
        with pytest.raises(SystemExit) as e:
            run_main(run_args(synthetic_coco, tmp_path / "small"))
    assert str(e.value).startswith(f"error: only 1 MiB free in {tmp_path / 'small'}, less than one checkpoint")
    assert "Start training" not in capsys.readouterr().out

    before = {n: (out / n).read_bytes() for n in ("checkpoint.pth", "checkpoint_prev.pth")}
    full = command(*run_args(synthetic_coco, out, "--resume", "auto", "--epochs", "2"), fault="enospc")
    assert full.returncode == 1 and "Traceback" not in full.stderr
    assert last_line(full) == (
        f"error: could not save {out / 'checkpoint.pth'}: No space left on device; kept unchanged: checkpoint.pth, "
        "checkpoint_prev.pth. Free space, then continue with --resume auto"
    )
    assert all((out / n).read_bytes() == b for n, b in before.items())
    assert not list(out.glob(".checkpoint*.tmp"))


@pytest.mark.slow
def test_ctrl_c_saves_and_a_second_one_stops_at_once(synthetic_coco, tmp_path, monkeypatch):
    """Ctrl-C (SIGINT to the whole process group, DataLoader worker included) during epoch 0: a
    mid-epoch checkpoint, a one-line message, exit status 130. Two Ctrl-C in one step: stopped at
    once, nothing saved."""
    out, release = tmp_path / "run", tmp_path / "signal_sent"
    argv = paused_main(*run_args(synthetic_coco, out, "--print_freq", "1", "--num_workers", "1"))
    proc = _popen(argv, release=release, start_new_session=True)
    # what a terminal does on Ctrl-C: SIGINT to the whole process group
    text = signal_when(proc, MARKER, signal_then_release(lambda: os.killpg(proc.pid, signal.SIGINT), release))
    assert proc.returncode == 130, text[-3000:]
    assert "received SIGINT: saving a checkpoint and stopping after the current step (Ctrl-C again" in text
    assert "stopped by SIGINT after epoch 0 iteration 0;" in text and "Traceback" not in text
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["iteration"] == 0  # after the first of 3 steps

    real = main_module.train_steps

    def twice(*a, **k):
        for it, scalars in real(*a, **k):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            yield it, scalars

    monkeypatch.setattr(main_module, "train_steps", twice)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_main(run_args(synthetic_coco, tmp_path / "twice"))
    assert not list((tmp_path / "twice").glob("checkpoint*.pth"))
    assert signal.getsignal(signal.SIGINT) is handler  # restored


@pytest.mark.slow
def test_hung_rank_ends_the_run(synthetic_coco, tmp_path):
    """torchrun, 2 gloo processes; rank 1 SIGSTOPs itself in its first step. Rank 0's next
    collective gives up after --dist_timeout 5: one line naming rank 1, exit status 1. (torchrun
    then waits 30 s before SIGKILLing the stopped rank; the test kills it at once.)"""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", str(ROOT / "tests" / "hung_rank_worker.py"),
        *run_args(synthetic_coco, tmp_path / "out", "--batch_size", "2", "--dist_timeout", "5"),
    ]  # fmt: skip
    proc = _popen(cmd, threads=1)

    def kill_the_stopped_rank() -> None:
        for pid in _children(proc.pid):
            if _rank_of(pid) == 1:
                os.kill(pid, signal.SIGKILL)

    text = signal_when(proc, "error: rank 0: a collective waited longer than --dist_timeout 5 s", kill_the_stopped_rank)
    assert proc.returncode != 0 and "rank 1 stops itself" in text, text[-3000:]
    assert (
        "error: rank 0: a collective waited longer than --dist_timeout 5 s: rank(s) 1 did not answer (hung, stopped "
        "or dead); stopping this rank. Resume with --resume auto"
    ) in text
