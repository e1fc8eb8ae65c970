"""Submit ``main.py`` training to Slurm (or run it locally) with submitit: one task per GPU,
``torch.distributed`` set up from the job's environment, every ``main.py`` flag passed through.

The official interface (``--nodes --ngpus --timeout --job_dir --use_volta32 --comment``) plus
``--partition``, ``--mem_gb``, ``--cpus_per_task``, ``--signal_delay_s`` and ``--cluster
slurm|local|debug``; submitit is an optional extra. Unlike the official script, a preempted or
timed-out job requeues from a mid-epoch checkpoint taken at the next optimizer step (``Trainer``),
not from the last finished epoch.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import main as detection  # noqa: E402
from util import config  # noqa: E402

INSTALL_HINT = (
    "run_with_submitit.py needs the optional package submitit: "
    "pip install submitit  (or: pip install -r requirements-extra.txt)"
)


def _submitit() -> Any:
    try:
        import submitit
    except ImportError as e:
        raise SystemExit(f"error: {INSTALL_HINT}") from e
    return submitit


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Submitit for DETR", parents=[detection.get_args_parser()])
    parser.add_argument("--ngpus", default=8, type=int, help="GPUs (= tasks) per node; CPU processes with --device cpu")
    parser.add_argument("--nodes", default=4, type=int, help="number of nodes to request")
    parser.add_argument("--timeout", default=60, type=int, help="duration of the job, in minutes")
    parser.add_argument(
        "--job_dir",
        default="",
        type=str,
        help="job folder (logs, checkpoints, '%%j' becomes the job id), shared by all nodes; "
        "default /checkpoint/$USER/experiments/%%j when /checkpoint exists",
    )
    # the official script hard-codes the partition "learnfair"
    parser.add_argument("--partition", default=None, type=str, help="Slurm partition (default: the cluster's)")
    parser.add_argument("--use_volta32", action="store_true", help="request 32G V100 GPUs")
    parser.add_argument("--comment", default="", type=str, help="Slurm comment (e.g. why the job is urgent)")
    parser.add_argument("--mem_gb", default=None, type=int, help="memory per node, GB (default 40 per GPU)")
    parser.add_argument("--cpus_per_task", default=10, type=int, help="CPU cores per task")
    parser.add_argument(
        "--signal_delay_s", default=120, type=int, help="seconds before the time limit Slurm signals the job"
    )
    parser.add_argument(
        "--cluster",
        default="slurm",
        choices=("slurm", "local", "debug"),
        help="where to run: Slurm, this machine (submitit's local executor), or in this process (debug)",
    )
    return parser


def shared_folder() -> Path | None:
    """The official default experiments folder, ``/checkpoint/$USER/experiments``, if it exists."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    if Path("/checkpoint").is_dir():
        return Path("/checkpoint") / user / "experiments"
    return None


def resolve_job_dir(job_dir: str) -> Path:
    """``--job_dir`` (``%j`` kept for submitit), else ``<shared folder>/%j``; checked writable.
    Without a shared folder, or with an unwritable one, a message says what to pass (the official
    script raises a bare ``RuntimeError``)."""
    if job_dir:
        path = Path(job_dir).expanduser().absolute()
    else:
        shared = shared_folder()
        if shared is None:
            raise SystemExit(
                "error: no shared experiments folder (/checkpoint does not exist here): pass --job_dir DIR, "
                "a folder every node of the job can read and write (e.g. --job_dir $HOME/detr_jobs/%j)"
            )
        path = shared / "%j"
    # the part before the first '%j' must exist and be writable
    first_j = next((i for i, part in enumerate(path.parts) if "%j" in part), len(path.parts))
    fixed = Path(*path.parts[:first_j])
    try:
        fixed.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=fixed, prefix=".write_test"):
            pass
    except OSError as e:
        raise SystemExit(
            f"error: cannot write to the job folder {fixed} ({type(e).__name__}: {e.strerror or e}); "
            "pass --job_dir DIR, a writable folder shared by all nodes"
        ) from e
    return path


def _init_file(job_dir: Path) -> Path:
    """A fresh file for ``torch.distributed``'s file:// rendezvous (must not exist beforehand)."""
    folder = Path(str(job_dir).split("%j")[0]) if "%j" in str(job_dir) else job_dir
    folder.mkdir(parents=True, exist_ok=True)
    init = folder / f".{uuid.uuid4().hex}_init"
    init.unlink(missing_ok=True)
    return init


class Trainer:
    """The submitted callable: runs ``main.main`` in every task; ``checkpoint()`` is what submitit
    calls on preemption/time-out to get the requeued job (``--resume auto``).

    The official job requeues from the last finished epoch (``--resume checkpoint.pth``). Here the
    signal is deferred to the next optimizer-step boundary (``util.preemption``): all ranks stop
    after the same step, rank 0 writes a mid-epoch checkpoint, then replays submitit's own handler,
    which calls ``checkpoint()`` and requeues the job; it continues exactly where it stopped. With
    ``--device cpu``, ``--ngpus`` counts CPU processes per node (gloo) and no GPU is requested."""

    def __init__(self, args: argparse.Namespace, given: set[str] | None = None) -> None:
        self.args, self.given = args, given

    def __call__(self) -> dict[str, Any]:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        import main as detection_main
        from util.preemption import Preempted

        rank = self._setup_distributed()
        try:
            return detection_main.main(self.args, given=self.given)
        except Preempted as e:
            print(f"{e}", flush=True)
            if rank == 0:
                # submitit's own handler for the signal: Trainer.checkpoint(), requeue, exit
                e.replay_previous_handlers()
                # still here: a signal submitit does not requeue on (SIGTERM: scancel, SIGUSR1)
                print("not requeued: resubmit with --resume auto to continue", flush=True)
                raise SystemExit(e.exit_code) from None
            raise SystemExit(0) from None  # other ranks: leave quietly, rank 0 requeues

    def checkpoint(self) -> Any:
        submitit = _submitit()
        args = copy.deepcopy(self.args)
        old = str(args.dist_url)
        if old.startswith("file://"):
            Path(old[len("file://") :]).unlink(missing_ok=True)
        args.dist_url = _init_file(Path(args.job_dir)).as_uri()
        args.resume = "auto"  # the newest readable checkpoint in output_dir (mid-epoch included)
        print(f"requeuing with --resume auto from {args.output_dir}", flush=True)
        return submitit.helpers.DelayedSubmission(type(self)(args, self.given))

    def _setup_distributed(self) -> int:
        """Ranks from submitit's job environment, exported as torchrun would; ``%j`` expanded."""
        submitit = _submitit()
        env = submitit.JobEnvironment()
        job_id = str(env.job_id)
        self.args.output_dir = str(self.args.output_dir).replace("%j", job_id)
        self.args.job_dir = str(self.args.job_dir).replace("%j", job_id)
        os.environ.update(
            RANK=str(env.global_rank),
            WORLD_SIZE=str(env.num_tasks),
            LOCAL_RANK=str(env.local_rank),
            LOCAL_WORLD_SIZE=str(env.num_tasks // max(env.num_nodes, 1)),
        )
        print(f"Process group: {env.num_tasks} tasks, rank: {env.global_rank}", flush=True)
        return env.global_rank


def submit(args: argparse.Namespace, given: set[str] | None = None) -> Any:
    """Submit the training job (``given``: the flags given on the command line); returns the submitit job."""
    submitit = _submitit()
    config.resolve(args)  # flag errors now, not in the queue (a resolved copy: the device is left to the nodes)
    if args.cluster == "slurm" and shutil.which("sbatch") is None:
        raise SystemExit(
            "error: Slurm not found (no sbatch on PATH): use --cluster local to run on this machine, "
            "or torchrun (see docs/clusters.md)"
        )
    if args.cluster == "local" and args.nodes > 1:
        raise SystemExit("error: --cluster local runs on one node: pass --nodes 1")
    job_dir = resolve_job_dir(args.job_dir)
    args.job_dir = str(job_dir)
    if not args.output_dir:
        args.output_dir = str(job_dir)
    args.dist_url = _init_file(job_dir).as_uri()

    executor = submitit.AutoExecutor(folder=str(job_dir), cluster=args.cluster, slurm_max_num_timeout=30)
    on_gpu = args.device is None or str(args.device).startswith("cuda")
    kwargs: dict[str, Any] = {}
    if args.partition:
        kwargs["slurm_partition"] = args.partition
    if args.use_volta32:
        kwargs["slurm_constraint"] = "volta32gb"
    if args.comment:
        kwargs["slurm_comment"] = args.comment
    executor.update_parameters(
        mem_gb=args.mem_gb if args.mem_gb is not None else 40 * args.ngpus,
        gpus_per_node=args.ngpus if on_gpu else 0,
        tasks_per_node=args.ngpus,  # one task per GPU
        cpus_per_task=args.cpus_per_task,
        nodes=args.nodes,
        timeout_min=args.timeout,
        slurm_signal_delay_s=args.signal_delay_s,
        name="detr",
        **kwargs,
    )
    job = executor.submit(Trainer(args, given))
    print(f"Submitted job_id: {job.job_id}")
    print(f"Logs and checkpoints: {str(job_dir).replace('%j', str(job.job_id))}")
    return job


def main() -> None:
    _submitit()  # a clear message before parsing when submitit is missing
    argv = sys.argv[1:]
    submit(get_args_parser().parse_args(argv), given=config.given_settings(argv))


if __name__ == "__main__":
    main()
