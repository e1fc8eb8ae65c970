"""torch.distributed helpers: initialisation from torchrun/Slurm environments, rank queries,
cross-process reductions.

Same behaviour as the official DETR helpers (``init_distributed_mode``, ``reduce_dict``,
``all_gather``) with two differences: the backend is NCCL on CUDA and gloo on CPU (the official
code hard-codes NCCL), and ``all_gather`` uses ``torch.distributed.all_gather_object``.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def broadcast_buffers(*modules: torch.nn.Module, src: int = 0) -> None:
    """Give every rank the buffers (BatchNorm running statistics) of rank ``src``.

    DDP broadcasts rank 0's buffers at the start of each training forward, so after an epoch's last
    step every rank holds its own update of them. Called after each epoch: evaluation on every rank
    and the checkpoint rank 0 writes then use the same model."""
    if get_world_size() == 1:
        return
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def all_gather(data: Any) -> list[Any]:
    """Gather any picklable object from every rank; returns a list with one entry per rank."""
    world_size = get_world_size()
    if world_size == 1:
        return [data]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, data)
    return out


def reduce_dict(input_dict: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """Sum (or average) scalar tensors of a dict over all ranks; every rank gets the result."""
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.all_reduce(values)
        if average:
            values /= world_size
        return dict(zip(names, values))


def is_collective_timeout(error: BaseException) -> bool:
    """Whether ``error`` is a collective that waited longer than the process group's timeout
    (gloo: "Timed out waiting ... for recv"; also DDP's all-reduce in the backward pass)."""
    return is_dist_avail_and_initialized() and isinstance(error, RuntimeError) and "timed out" in str(error).lower()


def unanswered_ranks(wait: float = 10.0) -> list[int]:
    """After a collective timed out: the ranks that do not answer through the rendezvous store
    within ``wait`` seconds (each rank that gets here checks in; a hung or dead one does not)."""
    store = dist.distributed_c10d._get_default_store()
    world, rank = get_world_size(), get_rank()
    store.set(f"answered/{rank}", "1")
    deadline = time.monotonic() + wait
    missing = list(range(world))
    while missing and time.monotonic() < deadline:
        missing = [r for r in missing if not store.check([f"answered/{r}"])]
        time.sleep(0.2)
    return missing


def collective_timeout_message(error: BaseException, timeout: int) -> str:
    """One line for a collective timeout on this rank, naming the ranks that did not answer."""
    try:
        missing = unanswered_ranks(min(10.0, float(timeout)))
    except Exception:  # the store itself is gone (its host rank died): say what is known
        missing = []
    who = f"rank(s) {', '.join(map(str, missing))} did not answer" if missing else "another rank did not answer"
    return (
        f"error: rank {get_rank()}: a collective waited longer than --dist_timeout {timeout} s: {who} "
        "(hung, stopped or dead); stopping this rank. Resume with --resume auto"
    )


def setup_for_distributed(is_master: bool) -> None:
    """Silence ``print`` on non-master ranks (``print(..., force=True)`` still prints)."""
    import builtins as __builtin__

    builtin_print = __builtin__.print

    def print(*args: Any, **kwargs: Any) -> None:  # noqa: A001
        force = kwargs.pop("force", False)
        if is_master or force:
            builtin_print(*args, **kwargs)

    __builtin__.print = print


def init_distributed_mode(args: Any) -> None:
    """Set ``args.distributed``, ``args.rank``, ``args.world_size``, ``args.gpu`` and start the
    process group when launched by torchrun (``RANK``/``WORLD_SIZE``) or Slurm (``SLURM_PROCID``).
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        args.rank = int(os.environ["RANK"])
        args.world_size = int(os.environ["WORLD_SIZE"])
        args.gpu = int(os.environ.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        args.rank = int(os.environ["SLURM_PROCID"])
        args.world_size = int(os.environ["SLURM_NTASKS"])
        args.gpu = args.rank % max(torch.cuda.device_count(), 1)
    else:
        print("Not using distributed mode")
        args.distributed = False
        return
    if args.world_size == 1:
        print("Not using distributed mode (world size 1)")
        args.distributed = False
        return

    args.distributed = True
    use_cuda = (args.device is None or str(args.device).startswith("cuda")) and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(args.gpu)
    args.dist_backend = "nccl" if use_cuda else "gloo"
    print(f"| distributed init (rank {args.rank}, backend {args.dist_backend}): {args.dist_url}", flush=True)
    dist.init_process_group(
        backend=args.dist_backend, init_method=args.dist_url, world_size=args.world_size, rank=args.rank,
        timeout=datetime.timedelta(seconds=args.dist_timeout),
    )  # fmt: skip
    dist.barrier()
    setup_for_distributed(args.rank == 0)
