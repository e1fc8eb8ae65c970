"""Checkpoint I/O: atomic saving, loading from a path or an URL, strict model loading with a
readable error, and the random-number-generator state needed for exact resumption.

The official code saves with ``torch.save`` straight to the final path (a run killed while saving
leaves a corrupt file) and pickles ``argparse.Namespace``. Here a checkpoint is written to a
temporary file in the same folder, flushed to disk and renamed over the old one, and holds only
tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
Official checkpoints (``{"model": ...}``, possibly with a pickled ``args``) load too.
``save_checkpoint(..., keep=2)`` keeps the replaced checkpoint (``checkpoint_prev.pth``), and
``find_resume_checkpoint`` (``--resume auto``) picks the newest readable checkpoint of a folder,
reporting and skipping truncated or corrupt ones (the official code has neither).

Also here: downloads that never poison the cache (a file that fails its hash or does not load is
deleted and reported in one line, so a retry downloads again), ``prepare_output_dir`` (a folder
that cannot be written is refused before training, low free space is a warning, temporary files
of interrupted saves are removed), and ``rotate_checkpoints`` behind ``--keep_checkpoints``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import random
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_VERSION = 2  # 2: TrainState (scaler, EMA, evaluation pending, best metric)

# Official training checkpoints pickle their argparse.Namespace: allow it in weights_only loads.
torch.serialization.add_safe_globals([argparse.Namespace])


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def is_url(path: str) -> bool:
    return str(path).startswith(("http://", "https://"))


def default_file_mode() -> int:
    """The permissions ``open()`` gives a new file (``0o666`` less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str], keep: int = 1) -> None:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename. With ``keep > 1`` the
    file it replaces is kept as ``checkpoint_prev.pth`` (and older ones as ``checkpoint_prev2.pth``
    ... up to ``keep`` files, see ``rotate_checkpoints``), as fallbacks should ``path`` become
    unreadable; at every moment one complete checkpoint exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600 -> what open() would have given
        if keep > 1 and path.exists():
            rotate_checkpoints(path.parent, keep)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_checkpoint(url: str) -> Path:
    """Download ``url`` into the torch hub cache (``$TORCH_HOME/hub/checkpoints``) unless it is
    there, and return the local path. A file name that carries a hash prefix (``name-<sha256
    prefix>.pth``, 8 hex digits or more, as the official URLs do) is cached under that name, as ``torch.hub`` does, and
    the download is checked against the hash before it lands in the cache; any other file under
    ``<digest of the whole URL>/<name>``, so that two URLs never share a cached file (every
    checkpoint of this project is named ``checkpoint.pth``). Raises ``CheckpointError`` in one line
    when the download fails."""
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint.pth"
    match = torch.hub.HASH_REGEX.search(name)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    hashed = match is not None and len(match.group(1)) >= 8  # the content is named: any URL of it may share it
    cached = folder / name if hashed else folder / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), match.group(1) if match else None, progress=False)
    except (urllib.error.URLError, OSError) as e:
        raise CheckpointError(
            f"could not download checkpoint {url} ({e}). Offline? Download it elsewhere and pass its local path."
        ) from e
    except RuntimeError as e:  # hash mismatch: torch removed the partial file
        raise CheckpointError(f"download of {url} is corrupt ({e}); nothing was cached, retry later") from e
    return cached


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint from a local path or an http(s) URL (downloaded once into the torch hub
    cache, hash-checked when the name carries a hash). Raises ``CheckpointError`` naming the file
    for a missing, unreadable or truncated checkpoint and for an URL that cannot be downloaded; a
    downloaded file that does not load (an HTML error page, a truncated transfer) is deleted from
    the cache, so that the next try downloads it again."""
    path = str(path)
    if is_url(path):
        cached = download_checkpoint(path)
        try:
            return load_checkpoint(cached, map_location)
        except CheckpointError as e:
            cached.unlink(missing_ok=True)
            raise CheckpointError(
                f"downloaded {path} is not a valid checkpoint; removed it from the cache ({e})"
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
        blocked = re.search(r"GLOBAL ([\w.]+)", str(e))
        if blocked:  # torch's own message advises weights_only=False, which would run the pickled code
            raise CheckpointError(
                f"checkpoint {p} refused: it needs the Python object {blocked.group(1)}, which a checkpoint of "
                "weights and plain values never holds (unpickling it could run code); not loaded"
            ) from None
        reason = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"checkpoint {p} could not be read ({type(e).__name__}: {reason})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


def rolling_names(keep: int) -> list[str]:
    """The rolling checkpoint files of a run, newest first: ``checkpoint.pth``, then
    ``checkpoint_prev.pth``, ``checkpoint_prev2.pth``, ... (``keep`` names in all)."""
    return ["checkpoint.pth"] + [f"checkpoint_prev{'' if i == 1 else i}.pth" for i in range(1, keep)]


def rotate_checkpoints(folder: str | os.PathLike[str], keep: int) -> None:
    """Before a new ``checkpoint.pth`` is written: shift the rolling copies by one (the oldest is
    dropped), keeping ``keep - 1`` previous checkpoints as fallbacks for a corrupt newest one."""
    folder = Path(folder)
    names = rolling_names(max(keep, 1))
    for older, newer in zip(reversed(names[1:]), reversed(names[:-1])):
        if (folder / newer).is_file():
            os.replace(folder / newer, folder / older)


def resume_candidates(folder: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints ``--resume auto`` may use in ``folder``, newest first (by modification
    time; on a tie ``checkpoint.pth``, then ``checkpoint_prev*.pth``, then the per-epoch copies).
    ``checkpoint_nonfinite.pth`` (weights before a NaN loss) and ``checkpoint_best.pth`` (weights
    only) are never picked."""
    folder = Path(folder)
    names = ["checkpoint.pth", "checkpoint_prev.pth"]
    names += sorted((p.name for p in folder.glob("checkpoint_prev[0-9]*.pth")), key=lambda n: int(n[15:-4]))
    paths = [folder / n for n in names if (folder / n).is_file()]
    paths += sorted(p for p in folder.glob("checkpoint[0-9]*.pth") if p.is_file())

    def key(p: Path) -> tuple[int, int]:
        rank = names.index(p.name) if p.name in names else len(names)
        return (-p.stat().st_mtime_ns, rank)

    return sorted(paths, key=key)


def prepare_output_dir(folder: str | os.PathLike[str]) -> list[str]:
    """Make sure a run can save before it trains: create ``folder``, write and remove a test file
    (raises ``CheckpointError`` naming the folder if that fails) and remove the temporary files
    left by interrupted saves. Returns notes for the log."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"--output_dir {folder} cannot be written ({e.strerror or e})") from e
    stale = sorted(folder.glob(".checkpoint*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return [f"removed {len(stale)} temporary file(s) of interrupted saves from {folder}"] if stale else []


def check_free_space(folder: str | os.PathLike[str], checkpoint_bytes: int) -> str | None:
    """A warning when ``folder``'s file system has room for fewer than three checkpoints; raises
    ``CheckpointError`` when it has room for less than one (the first save would fail)."""
    free = shutil.disk_usage(folder).free
    room = f"only {free / 2**20:.0f} MiB free in {folder}"
    size = f"~{checkpoint_bytes / 2**20:.0f} MiB each"
    if free < checkpoint_bytes:
        raise CheckpointError(f"{room}, less than one checkpoint ({size}): free space or choose another --output_dir")
    if free < 3 * checkpoint_bytes:
        return f"{room}, less than three checkpoints ({size}): saving may fail"
    return None


RUN_FILES = ("checkpoint*.pth", "log.txt", "eval.json", "eval", "tensorboard")


def previous_run_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The files and folders a run leaves in ``folder`` (checkpoints, ``log.txt``, evaluations,
    TensorBoard events), sorted; [] for a new folder."""
    folder = Path(folder)
    return sorted({p for pattern in RUN_FILES for p in folder.glob(pattern)}) if folder.is_dir() else []


class RunLock:
    """``<folder>/.run.lock``: held (``fcntl.flock``) by the one run that writes ``folder``, and
    naming it (host, PID, start time). The kernel drops the hold when that process ends however it
    ends, so a lock file left by a killed run is stale: taken over, with a note. Raises
    ``CheckpointError`` naming the holder when a live run holds it."""

    NAME = ".run.lock"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / self.NAME
        self.fd: int | None = None
        self.note = ""

    def acquire(self) -> RunLock:
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, default_file_mode())
            except OSError as e:
                raise CheckpointError(f"--output_dir {self.path.parent} cannot be written ({e.strerror or e})") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "an unknown process"
                os.close(fd)
                raise CheckpointError(
                    f"--output_dir {self.path.parent} is in use by another run ({holder}; lock {self.path}): "
                    "wait for it to end, or choose another --output_dir"
                ) from None
            try:  # the file may have been removed by a run ending between our open and flock: retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.pread(fd, 512, 0).decode(errors="replace").strip()
        if previous:
            self.note = f"took over the stale lock {self.path} of a run that ended without removing it ({previous})"
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        os.pwrite(fd, f"host {socket.gethostname()}, PID {os.getpid()}, started {started}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still held: no other run holds a removed file
            os.close(self.fd)
            self.fd = None


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


def _raise_if_misfit(header: str, missing: list[str], unexpected: list[str], mismatched: list[str], hint: str) -> None:
    """One ``CheckpointError``: ``header``, the missing, unexpected and mis-shaped keys (those
    there are), then ``hint``; nothing when all three lists are empty."""
    if not (missing or unexpected or mismatched):
        return
    parts = [header]
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            parts.append(f"{label}: {key_list(items)}")
    raise CheckpointError("; ".join([*parts, hint]))


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
    _raise_if_misfit(
        f"checkpoint {source} does not fit the model", missing, unexpected, mismatched,
        "(was it trained with other --backbone/--masks/--num_classes/--model flags?)",
    )  # fmt: skip
    model.load_state_dict(state, strict=True)


# Weights that fine-tuning may re-initialise when their shapes differ: the class heads (also the
# two-stage encoder's and the box-refinement decoder's, which share or copy them, and DINO's
# proposal head), the queries and DINO's denoising label embedding (one row per class).
_HEAD_PATTERN = re.compile(r"(^|\.)(class_embed|enc_out_class_embed)(\.|$)|(^|\.)(query_embed|label_enc)\.weight$")


def load_finetune_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``model`` for fine-tuning: every weight whose name and shape fit; the
    class heads (and ``query_embed``) keep their fresh initialisation when their shapes differ
    (another class count or number of queries). Any other missing, unexpected or mis-shaped weight
    is a ``CheckpointError`` listing the keys (another architecture). A box-only checkpoint loads
    into a model with a mask head (whose weights stay fresh). Returns one note per re-initialised
    key and a summary, for the log."""
    own = model.state_dict()
    if any(k.startswith("detr.") for k in own) and not any(k.startswith("detr.") for k in state):
        state = {f"detr.{k}": v for k, v in state.items()}
        fresh_prefixes: tuple[str, ...] = ("bbox_attention.", "mask_head.")
    else:
        fresh_prefixes = ()
    notes, load, missing, unexpected, mismatched = [], {}, [], [], []
    for k, v in own.items():
        if k not in state:
            if not k.startswith(fresh_prefixes):
                missing.append(k)
        elif state[k].shape == v.shape:
            load[k] = state[k]
        elif _HEAD_PATTERN.search(k):
            notes.append(f"re-initialised {k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}")
        else:
            mismatched.append(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}")
    unexpected = [k for k in state if k not in own]
    _raise_if_misfit(
        f"--finetune {source} does not fit the model beyond its class head and queries", missing, unexpected,
        mismatched, "(another --backbone, --masks, layer count or variant?)",
    )  # fmt: skip
    model.load_state_dict(load, strict=False)
    fresh = len(own) - len(load)
    notes.append(f"loaded {len(load)} of {len(own)} weights from {source}; {fresh} keep their initialisation")
    return notes


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


class CheckpointSaver:
    """Owns a run's checkpoint files in ``output_dir`` (``None``: nothing is saved): the rolling
    ``checkpoint.pth`` (``keep`` files), per-epoch copies, ``checkpoint_best.pth``, mid-epoch saves
    on a stop signal, ``checkpoint_nonfinite.pth`` and ``--resume auto``'s choice. Saving is
    collective: every rank calls it, rank 0 writes, no rank goes on before the file is on disk.
    ``state`` is a ``util.train_state.TrainState``."""

    def __init__(self, output_dir: str | os.PathLike[str] | None, keep: int = 2) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.keep = keep
        self.last_saved = ""  # what this run saved last ("epoch 3", "epoch 4, iteration 17")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``output_dir``'s ``RunLock`` (writing rank only) while the run lasts; a second run
        on the folder stops with a ``CheckpointError`` naming the holder."""
        from util import distributed as dist_utils

        if self.output_dir is None or not dist_utils.is_main_process():
            yield
            return
        held = RunLock(self.output_dir).acquire()
        if held.note:
            print(f"warning: {held.note}", flush=True)
        try:
            yield
        finally:
            held.release()

    def check_new_run(self, overwrite: bool) -> list[str]:
        """A run that does not resume must not replace another run's files: raises
        ``CheckpointError`` naming ``--resume auto`` and ``--overwrite_output_dir`` when
        ``output_dir`` holds checkpoints; with ``overwrite``, removes that run's files (listed in the
        returned notes)."""
        if self.output_dir is None or not any(self.output_dir.glob("checkpoint*.pth")):
            return []
        files = previous_run_files(self.output_dir)
        if not overwrite:
            raise CheckpointError(
                f"--output_dir {self.output_dir} holds another run's files ({key_list([p.name for p in files])}): "
                "continue it with --resume auto, or start over with --overwrite_output_dir (removes them)"
            )
        for p in files:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return [f"--overwrite_output_dir: removed the previous run's {key_list([p.name for p in files])}"]

    def _write(self, payload: dict[str, Any], name: str, keep: int = 1) -> str | None:
        from util import distributed as dist_utils

        path = None
        if self.output_dir is not None:
            path = self.output_dir / name
            if dist_utils.is_main_process():
                self._save_file(payload, path, keep)
        dist_utils.barrier()
        return str(path) if path is not None else None

    def _save_file(self, payload: dict[str, Any], path: Path, keep: int = 1) -> None:
        """``save_checkpoint``; a failed write (a full disk, a quota) is a ``CheckpointError``
        saying which checkpoints are still there."""
        try:
            save_checkpoint(payload, path, keep=keep)
        except OSError as e:
            kept = [n for n in rolling_names(self.keep) if (path.parent / n).is_file()]
            last = f" (this run's last save: {self.last_saved})" if self.last_saved else ""
            have = f"kept unchanged: {', '.join(kept)}{last}" if kept else "no checkpoint is saved"
            raise CheckpointError(
                f"could not save {path}: {e.strerror or e}; {have}. Free space, then continue with --resume auto"
            ) from e

    def save(self, state: Any, epoch_copy: bool = False) -> str | None:
        """``checkpoint.pth`` (rotating ``keep`` files), plus ``checkpointNNNN.pth`` with ``epoch_copy``.
        A failed write raises ``CheckpointError`` saying which checkpoints are kept."""
        payload = state.state_dict()
        path = self._write(payload, "checkpoint.pth", keep=self.keep)
        iteration = payload.get("iteration")
        self.last_saved = f"epoch {state.epoch}" + (f", iteration {iteration}" if iteration is not None else "")
        if epoch_copy:
            self._write(payload, f"checkpoint{state.epoch:04}.pth")
        return path

    def save_recovery(self, state: Any, epoch: int, iteration: int) -> str | None:
        """A mid-epoch save before stopping on a signal; says where, or that nothing was saved."""
        path = self.save(state)
        if path is None:
            print("warning: no --output_dir: the interrupted run's state is not saved", flush=True)
        else:
            print(f"saved epoch {epoch}, iteration {iteration} to {path}; continue with --resume auto", flush=True)
        return path

    def save_nonfinite(self, state: Any) -> str:
        """The last good state (weights before a non-finite step); returns where it is, for the message."""
        path = self._write(state.state_dict(), "checkpoint_nonfinite.pth")
        if path is None:
            return "no --output_dir: not saved"
        return f"the last good state (weights before that step) is in {path}"

    def save_best(self, state: Any, scores: dict[str, tuple[str, float]], epoch: int) -> None:
        """``checkpoint_best.pth``: the weights (``"model"`` or ``"ema"``, whichever scored higher in
        ``scores``: name -> (metric, value)) when they beat ``state.best``; no optimizer state.
        Called by the writing rank only."""
        if not scores:
            return
        which = max(scores, key=lambda k: scores[k][1])
        metric, value = scores[which]
        if state.best is not None and value <= state.best["value"]:
            return
        state.best = {"metric": metric, "value": value, "epoch": epoch, "weights": which}
        weights = state.model if which == "model" else state.ema.module
        best = {"version": CHECKPOINT_VERSION, "model": weights.state_dict(), "args": state.args, "best": state.best,
                "epoch": epoch}  # fmt: skip
        for key in ("id2label", "is_thing_map"):
            if getattr(state, key) is not None:
                best[key] = getattr(state, key)
        self._save_file(best, self.output_dir / "checkpoint_best.pth")  # not collective: rank 0 calls it
        print(f"checkpoint_best.pth: {metric} {value:.4f} at epoch {epoch} ({which} weights)")

    def find_recovery(self) -> str:
        """``--resume auto``: the newest readable checkpoint (unreadable newer ones are reported and
        skipped), or ``""`` (start from scratch, said so) when there is none at all. Stops with a
        message when the folder holds checkpoints but none is usable."""
        if self.output_dir is None:
            raise SystemExit("error: --resume auto looks for checkpoints in --output_dir: pass --output_dir")
        folder = self.output_dir
        path, problems = find_resume_checkpoint(folder) if folder.is_dir() else (None, [])
        for p in problems:
            print(f"warning: --resume auto: skipping {p}", flush=True)
        if path is None and problems:
            raise SystemExit(
                f"error: --resume auto: no usable checkpoint in {folder} ({len(problems)} unreadable). "
                "Remove them to start from scratch, or pass --resume PATH."
            )
        if path is None:
            print(f"--resume auto: no checkpoint in {folder}: starting from scratch", flush=True)
            return ""
        print(f"--resume auto: using {path}", flush=True)
        return str(path)
