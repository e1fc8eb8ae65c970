"""Checkpoint I/O: atomic saving, loading from a path or an URL, strict model loading with a
readable error, and the random-number-generator state needed for exact resumption.

The official code saves with ``torch.save`` straight to the final path (a run killed while saving
leaves a corrupt file) and pickles ``argparse.Namespace``. Here a checkpoint is written to a
temporary file in the same folder, flushed to disk and renamed over the old one, and holds only
tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
Official checkpoints (``{"model": ...}``, possibly with a pickled ``args``) load too.
``save_checkpoint(..., previous=...)`` keeps the replaced checkpoint (``checkpoint_prev.pth``), and
``find_resume_checkpoint`` (``--resume auto``) picks the newest readable checkpoint of a folder,
reporting and skipping truncated or corrupt ones (the official code has neither).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_VERSION = 1

# Official training checkpoints pickle their argparse.Namespace: allow it in weights_only loads.
torch.serialization.add_safe_globals([argparse.Namespace])


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def is_url(path: str) -> bool:
    return str(path).startswith(("http://", "https://"))


def save_checkpoint(
    state: dict[str, Any], path: str | os.PathLike[str], previous: str | os.PathLike[str] | None = None
) -> None:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename. With ``previous``,
    an existing ``path`` is first moved there (kept as a fallback should ``path`` become
    unreadable); at every moment one of the two holds a complete checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint from a local path or an http(s) URL (cached by ``torch.hub``,
    ``check_hash`` on). Raises ``CheckpointError`` naming the file for a missing, unreadable or
    truncated checkpoint, and for an URL that cannot be downloaded."""
    path = str(path)
    if is_url(path):
        try:
            return torch.hub.load_state_dict_from_url(
                path, map_location=map_location, check_hash=True, weights_only=True
            )
        except (urllib.error.URLError, OSError) as e:
            raise CheckpointError(
                f"could not download checkpoint {path} ({e}). Offline? Download it elsewhere and pass its local path."
            ) from e
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    # Again at every load: torch's safe_globals context manager (timm uses it) removes the globals it
    # lists on exit, even those registered before it.
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, wrong format, unpicklable object...
        raise CheckpointError(f"checkpoint {p} could not be read ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


def resume_candidates(folder: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints ``--resume auto`` may use in ``folder``, newest first (by modification
    time; on a tie ``checkpoint.pth``, then ``checkpoint_prev.pth``, then the per-epoch copies).
    ``checkpoint_nonfinite.pth`` (weights before a NaN loss) is never picked."""
    folder = Path(folder)
    names = ["checkpoint.pth", "checkpoint_prev.pth"]
    paths = [folder / n for n in names if (folder / n).is_file()]
    paths += sorted(p for p in folder.glob("checkpoint[0-9]*.pth") if p.is_file())

    def key(p: Path) -> tuple[int, int]:
        rank = names.index(p.name) if p.name in names else len(names)
        return (-p.stat().st_mtime_ns, rank)

    return sorted(paths, key=key)


def find_resume_checkpoint(
    folder: str | os.PathLike[str], required: tuple[str, ...] = ("model",)
) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of ``folder`` that loads and holds the ``required`` keys, and one
    message per newer candidate that was skipped (truncated, corrupt, incomplete).
    ``(None, [])``: the folder holds no checkpoint at all; ``(None, problems)``: none is usable."""
    problems: list[str] = []
    for path in resume_candidates(folder):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        missing = [k for k in required if k not in ckpt]
        if missing:
            problems.append(f"checkpoint {path} lacks {', '.join(missing)}")
            continue
        return path, problems
    return None, problems


def model_state_from_checkpoint(ckpt: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The model's state dict in a checkpoint (``ckpt["model"]``, or a bare state dict)."""
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {source} has no model state dict (keys: {sorted(ckpt)[:10]})")
    return state


def key_list(items: list[str], limit: int = 8, sep: str = ", ") -> str:
    """The first ``limit`` items joined, and how many there are in all (for error messages)."""
    return sep.join(items[:limit]) + (f"{sep}... ({len(items)} in all)" if len(items) > limit else "")


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)``, with one error naming the file and listing
    the missing, unexpected and mis-shaped keys (the usual cause: another model configuration)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint {source} does not fit the model"]
        if missing:
            parts.append(f"missing keys: {key_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {key_list(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {key_list(mismatched)}")
        parts.append("(was it trained with other --backbone/--masks/--num_classes/--model flags?)")
        raise CheckpointError("; ".join(parts))
    model.load_state_dict(state, strict=True)


def get_rng_state() -> dict[str, Any]:
    """Python and torch (CPU and CUDA) generator states, in weights-only-loadable types."""
    py = random.getstate()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
