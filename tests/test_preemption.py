"""Preemption: a real signal (SIGUSR1/SIGUSR2/SIGTERM) stops training after the current step with
a mid-epoch checkpoint; ``--resume auto`` continues from it and the run ends with the same
weights, optimizer state, scheduler and ``log.txt`` as an uninterrupted one (CPU, tiny model,
12 images, 3 iterations per epoch, 2 epochs); single process and torchrun with 2 processes.
``--resume auto`` falls back from a corrupt newest checkpoint to the previous one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from paused_main import MARKER, RELEASE
from tiny import TINY

import main as main_module
from util.checkpoint import CheckpointSaver, save_checkpoint
from util.preemption import Preempted

ROOT = Path(__file__).resolve().parents[1]
# 12 images / batch 4 = 3 iterations per epoch; evaluation only after the last epoch
RUN = ["--epochs", "2", "--eval_every", "2", "--print_freq", "1", "--lr_drop", "1"]


def run_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, "--coco_path", str(data), "--output_dir", str(out), *RUN, *extra]


def parse(argv: list[str]) -> Namespace:
    return main_module.get_args_parser().parse_args(argv)


def assert_same_run(ref: Path, other: Path) -> None:
    """Same final weights, optimizer state, scheduler, epoch and identical log.txt."""
    a = torch.load(ref / "checkpoint.pth", weights_only=True)
    b = torch.load(other / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] and b.get("iteration") is None
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"weights differ at {k}"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), f"optimizer state differs at {i}/{k}"
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert (ref / "log.txt").read_text() == (other / "log.txt").read_text()


@pytest.fixture(scope="module")
def reference(synthetic_coco, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    main_module.main(parse(run_args(synthetic_coco, out)))
    return out


def _interrupt_at(monkeypatch, epoch: int, iteration: int, sig: int) -> None:
    """Send ``sig`` to this very process during step ``iteration`` of ``epoch`` (a real signal,
    delivered while training; deterministic, so the test knows where the run must stop)."""
    real = main_module.train_steps

    def wrapped(*a, **k):
        ep = a[5]
        for it, scalars in real(*a, **k):
            if (ep, it) == (epoch, iteration):
                os.kill(os.getpid(), sig)
            yield it, scalars

    monkeypatch.setattr(main_module, "train_steps", wrapped)


@pytest.mark.slow
def test_interrupted_several_times_ends_identical(synthetic_coco, tmp_path, reference, monkeypatch, capsys):
    """Stopped 3 times (mid-epoch 0, at the last step of epoch 0, mid-epoch 1) with SIGTERM,
    SIGUSR1, SIGUSR2, resumed with --resume auto each time: identical to the uninterrupted run."""
    out = tmp_path / "run"
    stops = [(0, 0, signal.SIGTERM), (0, 2, signal.SIGUSR1), (1, 1, signal.SIGUSR2)]
    # checkpoint_prev.pth after each stop: the checkpoint the stop replaced (end of epoch 0: iteration None)
    expected_prev = [None, (0, 0), (0, None)]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    for (epoch, iteration, sig), prev_expected in zip(stops, expected_prev):
        with monkeypatch.context() as m:
            _interrupt_at(m, epoch, iteration, sig)
            with pytest.raises(Preempted) as e:
                main_module.main(parse(run_args(synthetic_coco, out, "--resume", "auto")))
        assert (e.value.epoch, e.value.iteration, e.value.signum) == (epoch, iteration, sig)
        assert e.value.exit_code == 128 + sig
        ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
        assert (ckpt["epoch"], ckpt["iteration"]) == (epoch, iteration)
        assert {"meters_per_rank", "rng_per_rank", "optimizer", "lr_scheduler"} <= set(ckpt)
        if prev_expected is not None:  # the replaced checkpoint is kept
            prev = torch.load(out / "checkpoint_prev.pth", weights_only=True)
            assert (prev["epoch"], prev.get("iteration")) == prev_expected
        # the stop handlers are removed again when main() returns
        assert {s: signal.getsignal(s) for s in handlers} == handlers

    main_module.main(parse(run_args(synthetic_coco, out, "--resume", "auto")))
    text = capsys.readouterr().out
    assert "no checkpoint in" in text and "starting from scratch" in text
    assert "starting at epoch 0, iteration 1" in text and "starting at epoch 0, iteration 3" in text
    assert "starting at epoch 1, iteration 2" in text
    assert_same_run(reference, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _popen(cmd: list[str], threads: int = 2, release: Path | None = None, **kwargs) -> subprocess.Popen:
    """Start ``cmd`` with its output piped; ``release``: the file a ``paused_main`` run waits for."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    if release is not None:
        env[RELEASE] = str(release)
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )


def paused_main(*argv: str) -> list[str]:
    """``python main.py ARGV`` through ``tests/paused_main.py``: training waits after its first step
    until the test has signalled it and created the release file (see ``signal_then_release``)."""
    return [sys.executable, str(ROOT / "tests" / "paused_main.py"), str(ROOT / "main.py"), *argv]


def signal_then_release(send: callable, release: Path) -> callable:
    """``send`` the signal, then let the paused run go on: the signal is pending when it does."""

    def both() -> None:
        send()
        release.touch()

    return both


def signal_when(proc: subprocess.Popen, marker: str, send: callable, timeout: float = 240) -> str:
    """Read ``proc``'s output; when ``marker`` appears call ``send()`` (once); return all output."""
    lines: list[str] = []
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    sent = False
    try:
        for line in proc.stdout:
            lines.append(line)
            if not sent and marker in line:
                send()
                sent = True
        proc.wait()
    finally:
        timer.cancel()
    out = "".join(lines)
    assert sent, f"never saw {marker!r}:\n{out[-3000:]}"
    return out


@pytest.mark.slow
def test_external_sigusr1_mid_epoch_then_resume(synthetic_coco, tmp_path, reference):
    """``kill -USR1 <pid>`` while ``python main.py`` trains epoch 0: exit status 138, a mid-epoch
    checkpoint; ``--resume auto`` then ends identical to the uninterrupted run."""
    out, release = tmp_path / "run", tmp_path / "signal_sent"
    proc = _popen(paused_main(*run_args(synthetic_coco, out)), release=release)
    text = signal_when(proc, MARKER, signal_then_release(lambda: proc.send_signal(signal.SIGUSR1), release))
    assert proc.returncode == 128 + signal.SIGUSR1, text[-3000:]
    assert "received SIGUSR1" in text and "stopped by SIGUSR1 after epoch 0 iteration 0;" in text
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["iteration"] == 0  # after the first of 3 steps
    assert not (out / "log.txt").exists()  # no epoch finished yet

    main_module.main(parse(run_args(synthetic_coco, out, "--resume", "auto")))
    assert_same_run(reference, out)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for kv in env:
        if kv.startswith(b"RANK="):
            return int(kv[5:])
    return None


@pytest.mark.slow
def test_torchrun_two_processes_signal_to_one_rank(synthetic_coco, tmp_path):
    """torchrun, 2 CPU processes (gloo), batch 2 each, 1 epoch: SIGUSR1 to rank 1 only stops both
    ranks after the same step (the flag is all-reduced); resumed with --resume auto, the run ends
    identical to an uninterrupted 2-process run (per-rank RNG states restored)."""

    def torchrun(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}", str(ROOT / "tests" / "paused_main.py"), str(ROOT / "main.py"),
            *run_args(synthetic_coco, out, "--batch_size", "2", "--epochs", "1", *extra),
        ]  # fmt: skip

    ref, out, release = tmp_path / "ref", tmp_path / "run", tmp_path / "signal_sent"
    release.touch()  # the reference run does not wait
    proc = _popen(threads=1, cmd=torchrun(ref), release=release)
    text = signal_when(proc, "Start training", lambda: None)
    assert proc.returncode == 0, text[-3000:]

    release.unlink()
    proc = _popen(threads=1, cmd=torchrun(out), release=release)

    def to_rank1() -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            pids = [p for p in _children(proc.pid) if _rank_of(p) == 1]
            if pids:
                os.kill(pids[0], signal.SIGUSR1)
                return
            time.sleep(0.1)
        raise AssertionError("rank 1 not found")

    text = signal_when(proc, MARKER, signal_then_release(to_rank1, release))
    assert proc.returncode != 0  # torchrun reports the workers' exit status 138
    assert "stopped by SIGUSR1 after epoch 0 iteration 0;" in text, text[-3000:]
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["iteration"] == 0 and ckpt["world_size"] == 2
    assert len(ckpt["rng_per_rank"]) == 2 and len(ckpt["meters_per_rank"]) == 2

    proc = _popen(threads=1, cmd=torchrun(out, "--resume", "auto"), release=release)
    text = signal_when(proc, "resumed from", lambda: None)
    assert proc.returncode == 0, text[-3000:]
    assert_same_run(ref, out)


# ---------------------------------------------------------------- --resume auto, no training


def _state(epoch: int, iteration: int | None = None) -> dict:
    return {"model": {"w": torch.full((2,), float(epoch))}, "epoch": epoch, "iteration": iteration}


def test_resume_auto_picks_newest_and_skips_corrupt(tmp_path, capsys):
    out = tmp_path / "out"
    save_checkpoint(_state(0), out / "checkpoint.pth")
    save_checkpoint(_state(1, 2), out / "checkpoint.pth", keep=2)
    assert torch.load(out / "checkpoint_prev.pth", weights_only=True)["epoch"] == 0
    args = Namespace(resume="auto", output_dir=str(out))
    assert CheckpointSaver(args.output_dir).find_recovery() == str(out / "checkpoint.pth")

    # the newest one truncated (e.g. a disk filled up): reported, the previous one is used
    data = (out / "checkpoint.pth").read_bytes()
    (out / "checkpoint.pth").write_bytes(data[: len(data) // 2])
    assert CheckpointSaver(args.output_dir).find_recovery() == str(out / "checkpoint_prev.pth")
    text = capsys.readouterr().out
    assert "skipping checkpoint" in text and "checkpoint.pth could not be read" in text

    # nothing usable: stop, never start from scratch silently
    (out / "checkpoint_prev.pth").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as e:
        CheckpointSaver(args.output_dir).find_recovery()
    assert "no usable checkpoint" in str(e.value.code) and "--resume PATH" in str(e.value.code)


def test_resume_auto_without_checkpoint_or_output_dir(tmp_path, capsys):
    assert CheckpointSaver(str(tmp_path / "new")).find_recovery() == ""
    assert "starting from scratch" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        CheckpointSaver("").find_recovery()
    assert "--output_dir" in str(e.value.code)


def test_resume_auto_other_configuration_is_reported(synthetic_coco, tmp_path):
    out = tmp_path / "out"
    save_checkpoint({"model": {"transformer.foo": torch.zeros(1)}, "epoch": 0}, out / "checkpoint.pth")
    with pytest.raises(SystemExit) as e:
        main_module.main(parse([*run_args(synthetic_coco, out, "--resume", "auto", "--num_classes", "4")]))
    msg = str(e.value.code)
    assert "checkpoint.pth" in msg and "does not fit" in msg and "transformer.foo" in msg


@pytest.mark.slow
def test_signal_during_last_evaluation_lets_the_run_finish(synthetic_coco, tmp_path, reference, monkeypatch, capsys):
    """A stop signal after the last optimizer step (here during the final evaluation) has nothing
    left to stop: the run finishes, says so, and equals the uninterrupted one."""
    real = main_module.evaluate

    def evaluate(*a, **k):
        os.kill(os.getpid(), signal.SIGUSR1)
        return real(*a, **k)

    monkeypatch.setattr(main_module, "evaluate", evaluate)
    out = tmp_path / "run"
    main_module.main(parse(run_args(synthetic_coco, out)))
    assert "SIGUSR1 came after the last training step: the run finished normally" in capsys.readouterr().out
    assert_same_run(reference, out)
