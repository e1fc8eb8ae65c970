"""run_with_submitit.py: the real submission path through submitit's local executor (no Slurm
here). A job receives submitit's preemption signal (SIGUSR2, what Slurm sends) mid-epoch (the job
waits after its first step until the signal is sent, so the stop point does not depend on the
machine's speed), saves a mid-epoch checkpoint, is requeued by submitit through
``Trainer.checkpoint``, resumes with ``--resume auto`` and ends identical to an uninterrupted run. Also: the messages for a missing
submitit, no shared job folder, an unwritable job folder and a missing Slurm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paused_main import MARKER, RELEASE, pause_after_first_step
from test_preemption import RUN, _children, assert_same_run, reference  # noqa: F401  (fixture)
from tiny import TINY

import run_with_submitit as rws

ROOT = Path(__file__).resolve().parents[1]


class PausingTrainer(rws.Trainer):
    """``rws.Trainer`` whose job waits after its first optimizer step until the test has sent its
    signal (``paused_main``). Pickled by reference: tests/ is on the job's ``PYTHONPATH``."""

    def __call__(self):
        import main

        main.train_steps = pause_after_first_step(main.train_steps, Path(os.environ[RELEASE]))
        return super().__call__()


def test_missing_submitit_says_how_to_install(tmp_path):
    code = (
        "import runpy, sys; sys.modules['submitit'] = None; "
        f"sys.argv = ['run_with_submitit.py', '--job_dir', {str(tmp_path)!r}]; "
        f"runpy.run_path({str(ROOT / 'run_with_submitit.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "pip install submitit" in proc.stderr and "requirements-extra.txt" in proc.stderr, proc.stderr


def test_job_dir_messages(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setattr(rws, "shared_folder", lambda: None)
    with pytest.raises(SystemExit) as e:
        rws.resolve_job_dir("")
    assert "pass --job_dir" in str(e.value.code)

    monkeypatch.setattr(rws, "shared_folder", lambda: tmp_path / "experiments")
    assert rws.resolve_job_dir("") == tmp_path / "experiments" / "%j"
    assert (tmp_path / "experiments").is_dir()

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as e:  # unwritable: a file in the way (works as root too)
        rws.resolve_job_dir(str(blocker / "jobs" / "%j"))
    assert "cannot write to the job folder" in str(e.value.code) and "--job_dir" in str(e.value.code)

    monkeypatch.setattr(rws.shutil, "which", lambda name: None)
    args = rws.get_args_parser().parse_args(["--job_dir", str(tmp_path / "j"), "--coco_path", "x"])
    with pytest.raises(SystemExit) as e:
        rws.submit(args)
    assert "Slurm not found" in str(e.value.code) and "--cluster local" in str(e.value.code)


def _wait_for(path_fn, marker: str, job, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = path_fn()
        text = path.read_text() if path.exists() else ""
        if marker in text:
            return text
        if job.done():
            break
        time.sleep(0.2)
    raise AssertionError(f"never saw {marker!r}: {text[-3000:]}")


@pytest.mark.slow
def test_local_executor_preempted_requeued_resumed(synthetic_coco, tmp_path, reference, monkeypatch):  # noqa: F811
    pytest.importorskip("submitit")
    release = tmp_path / "signal_sent"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    monkeypatch.setenv(RELEASE, str(release))
    monkeypatch.setattr(rws, "Trainer", PausingTrainer)
    argv = [
        *TINY, "--coco_path", str(synthetic_coco), *RUN,
        "--cluster", "local", "--nodes", "1", "--ngpus", "1", "--timeout", "20",
        "--job_dir", str(tmp_path / "jobs" / "%j"),
    ]  # fmt: skip
    job = rws.submit(rws.get_args_parser().parse_args(argv))
    out = tmp_path / "jobs" / str(job.job_id)
    _wait_for(lambda: job.paths.stdout, MARKER, job)
    tasks = _children(int(job.job_id))  # the controller's child: the task running main.py
    assert len(tasks) == 1
    os.kill(tasks[0], signal.SIGUSR2)  # what Slurm sends before the time limit / on preemption
    release.touch()

    result = job.result()  # waits for the requeued job to finish
    log = job.paths.stdout.read_text() + job.paths.stderr.read_text()
    assert "stopped by SIGUSR2 after epoch 0 iteration 0" in log, log[-3000:]
    assert "requeuing with --resume auto" in log and "Requeued job" in log
    assert "resumed from" in log and "starting at epoch 0, iteration" in log
    assert "coco_eval_bbox" in result
    assert_same_run(reference, out)
