"""Plot training curves from runs' ``log.txt`` files and precision-recall curves from saved COCO evaluations.

``python tools/plot_logs.py RUN [RUN ...]`` (a run is an output folder or its ``log.txt``) writes the
three figures of the popular DETR fine-tuning fork (``FORK_FIGURES``: ``loss_mAP.png``,
``loss_terms.png``, ``errors.png``) and ``precision_recall.png`` from each run's ``eval/latest.pth``
into ``--out_dir`` (default: the run's folder); ``--out FILE`` also writes ``make demo``'s one-row
``curves.png``. Unlike the official ``util/plot_utils.py``: no pandas or seaborn, x is each line's
epoch (the official mAP curve used the row index), classes without ground truth are left out, and
runs get distinct colours and marked points (one-epoch runs show).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The fork's figures: file stem -> fields, one panel each ("mAP": validation AP@0.5; the loss terms
# weighted as in the total loss; the class error in %; the cardinality error unscaled).
FORK_FIGURES: dict[str, tuple[str, ...]] = {
    "loss_mAP": ("loss", "mAP"),
    "loss_terms": ("loss_ce", "loss_bbox", "loss_giou"),
    "errors": ("class_error", "cardinality_error_unscaled"),
}

# What a saved COCOeval.eval dict may reference besides plain values: numpy arrays and scalars,
# and the evaluation parameters (pycocotools' or faster-coco-eval's Params).
_NUMPY_GLOBALS = {
    f"numpy.{core}.multiarray.{name}" for core in ("core", "_core") for name in ("_reconstruct", "scalar")
} | {"numpy.ndarray", "numpy.dtype"}


def _is_eval_global(name: str) -> bool:
    return name in _NUMPY_GLOBALS or (
        name.startswith(("pycocotools.", "faster_coco_eval.")) and name.endswith(".Params")
    )


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("tools/plot_logs.py needs matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_path(run: str | Path) -> Path:
    return Path(run) / "log.txt" if Path(run).is_dir() else Path(run)


def _run_name(run: str | Path) -> str:
    path = Path(run)
    return (path.parent if path.is_file() else path).resolve().name


def read_log(run_dir: str | Path) -> list[dict]:
    """The epochs of a run's ``log.txt`` (``run_dir`` is the folder or the file itself)."""
    path = _log_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no log file at {path}")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not a JSON object ({e.msg})") from e
    return entries


def _series(log: list[dict], key: str, index: int | None = None) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key`` (element ``index`` of a list value) in the entries that have it."""
    points = [(e["epoch"], e[key] if index is None else e[key][index]) for e in log if key in e]
    return [p[0] for p in points], [p[1] for p in points]


def _save(fig: Any, out: str | Path) -> Path:
    """Write ``fig`` to ``out`` through a temporary file and a rename (no partial image is left on failure)."""
    plt = _pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fig.savefig(tmp, dpi=100, format=out.suffix.lstrip(".") or "png")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return out


def _marker(points: Sequence[Any]) -> str | None:
    """A marker on every point of a short curve, so that a one-epoch run still shows its value."""
    return "o" if len(points) < 30 else None


def _run_colours(count: int) -> list[Any]:
    """One clearly distinct colour per run (matplotlib's qualitative cycle, then tab20)."""
    plt = _pyplot()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return list(cycle[:count]) if count <= len(cycle) else list(plt.get_cmap("tab20")(np.arange(count) % 20))


def summary_figure(run_dirs: Sequence[str | Path]) -> Any:
    """A 1x3 figure (total loss, loss terms, AP) of the given runs: one colour per run, train solid
    and val dashed, the terms told apart by line style; points marked on short runs. Returns the figure."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run, colour in zip(run_dirs, _run_colours(len(run_dirs))):
        log = read_log(run)
        name = _run_name(run)
        for ax, style, label, (x, y) in (
            (axes[0], "-", "train", _series(log, "train_loss")),
            (axes[0], "--", "val", _series(log, "test_loss")),
            *[(axes[1], style, term, _series(log, f"train_{term}_unscaled"))
              for style, term in zip(("-", "--", ":"), ("loss_ce", "loss_bbox", "loss_giou"))],
            (axes[2], "-", "AP50", _series(log, "test_coco_eval_bbox", 1)),
            (axes[2], "--", "AP", _series(log, "test_coco_eval_bbox", 0)),
        ):  # fmt: skip
            if x:
                ax.plot(x, y, style, color=colour, marker=_marker(x), label=f"{name} {label}")
    for ax, title in zip(axes, ("total loss", "loss terms (train, unweighted)", "held-out box AP")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    axes[2].set_ylim(0, 1)
    fig.tight_layout()
    return fig


def plot_logs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write ``summary_figure(run_dirs)`` to ``out`` (its folder created); returns the path."""
    return _save(summary_figure(run_dirs), out)


def plot_fields(run_dirs: Sequence[str | Path], fields: Sequence[str]) -> Any:
    """One panel per field, as the official ``plot_logs``: ``train_<field>`` solid and
    ``test_<field>`` dashed against the epoch, one colour per run; ``mAP`` is the validation box
    AP@0.5 (``test_coco_eval_bbox[1]``, what the official ``plot_utils`` plots under that name; the
    official curve used the row index as x, wrong with ``--eval_every``). Lines are labelled
    ``"<run> train"`` / ``"<run> val"``. Returns the figure."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(fields), figsize=(5.5 * len(fields), 4.5), squeeze=False)
    for run, colour in zip(run_dirs, _run_colours(len(run_dirs))):
        log, name = read_log(run), _run_name(run)
        for ax, field in zip(axes[0], fields):
            if field == "mAP":
                curves = [("val", "--", _series(log, "test_coco_eval_bbox", 1))]
            else:
                curves = [("train", "-", _series(log, f"train_{field}")), ("val", "--", _series(log, f"test_{field}"))]
            for split, style, (epochs, values) in curves:
                if epochs:
                    ax.plot(epochs, values, style, color=colour, marker=_marker(epochs), label=f"{name} {split}")
    for ax, field in zip(axes[0], fields):
        ax.set_title("mAP (val, AP@0.5)" if field == "mAP" else field)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {field} in the logs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def write_fork_figures(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """``loss_mAP.png``, ``loss_terms.png`` and ``errors.png`` (``FORK_FIGURES``) in ``out_dir``."""
    return [
        _save(plot_fields(run_dirs, fields), Path(out_dir) / f"{stem}.png") for stem, fields in FORK_FIGURES.items()
    ]


def _allowed_global(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    obj: Any = importlib.import_module(module)
    return getattr(obj, attr)


def load_coco_eval(path: str | Path) -> dict[str, Any]:
    """A saved ``COCOeval.eval`` dict (``main.py``'s ``eval/latest.pth``): ``precision [T, R, K, A, M]``,
    ``recall [T, K, A, M]``, ``scores [T, R, K, A, M]`` and ``params`` (``recThrs``, ...). Loaded with
    ``weights_only=True``; only numpy arrays and pycocotools' (or faster-coco-eval's) ``Params`` may
    be in it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no COCO evaluation file at {path}")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        refused = [n for n in names if not _is_eval_global(n)]
        if refused:
            raise ValueError(f"refusing to load {refused} (a COCOeval.eval dict holds numpy arrays and Params)")
        # numpy pickles dtypes through their classes (Float64DType, ...), which torch does not list
        dtypes = [type(np.dtype(t)) for t in (bool, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                              np.uint32, np.uint64, np.float16, np.float32, np.float64)]  # fmt: skip
        with torch.serialization.safe_globals([_allowed_global(n) for n in names] + dtypes):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, unknown content...
        raise ValueError(f"{path}: cannot be read as a saved COCO evaluation ({type(e).__name__}: {e})") from e
    missing = [k for k in ("precision", "recall", "scores", "params") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path}: not a COCOeval.eval dict (missing {missing})")
    if np.ndim(data["precision"]) != 5:
        raise ValueError(f"{path}: precision must be [T, R, K, A, M], got shape {np.shape(data['precision'])}")
    return data


def _class_mean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over classes of entries > -1 (pycocotools' -1: no ground truth, which the official
    averages pulled down); NaN where none."""
    valid = values > -1
    total = np.where(valid, values, 0).sum(axis)
    count = valid.sum(axis)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def precision_recall_curves(data: dict[str, Any]) -> dict[str, Any]:
    """Recall thresholds ``recall [R]``, and at IoU 0.5, all areas, the largest detection count,
    averaged over classes: ``precision [R]``, ``scores [R]``, ``mAP50`` and the mean ``recall_at_50``."""
    params = data["params"]
    rec_thrs = np.asarray(params["recThrs"] if isinstance(params, dict) else params.recThrs)
    precision = _class_mean(np.asarray(data["precision"])[0, :, :, 0, -1], axis=1)
    scores = _class_mean(np.asarray(data["scores"])[0, :, :, 0, -1], axis=1)
    recall = _class_mean(np.asarray(data["recall"])[0, :, 0, -1], axis=0)
    return {
        "recall": rec_thrs,
        "precision": precision,
        "scores": scores,
        "mAP50": float(np.nanmean(precision)),
        "recall_at_50": float(recall),
    }


def plot_precision_recall(files: Sequence[str | Path], naming_scheme: str = "iter") -> tuple[Any, Any]:
    """The official ``plot_precision_recall``: precision / recall and scores / recall of each saved
    evaluation, one distinct colour per file (the official darker blues were hard to tell apart);
    names are the file stems (``iter``) or the run folders (``exp_id``). Prints mAP@50, mean score
    and F1 per file. Returns ``(fig, axes)``."""
    if naming_scheme not in ("iter", "exp_id"):
        raise ValueError(f"naming_scheme: unknown '{naming_scheme}', choose from ['exp_id', 'iter']")
    plt = _pyplot()
    paths = [Path(f) for f in files]
    names = [p.resolve().parts[-3] if naming_scheme == "exp_id" else p.stem for p in paths]
    colours = _run_colours(len(paths))
    fig, axes = plt.subplots(1, 2, figsize=(16, 5))
    for path, name, colour in zip(paths, names, colours):
        c = precision_recall_curves(load_coco_eval(path))
        prec, rec = c["mAP50"], c["recall_at_50"]
        print(
            f"{naming_scheme} {name}: mAP@50={prec * 100:05.1f}, score={np.nanmean(c['scores']):0.3f}, "
            f"f1={2 * prec * rec / (prec + rec + 1e-8):0.3f}"
        )
        axes[0].plot(c["recall"], c["precision"], color=colour, label=name)
        axes[1].plot(c["recall"], c["scores"], color=colour, label=name)
    for ax, title in zip(axes, ("Precision / Recall", "Scores / Recall")):
        ax.set_title(title)
        ax.set_xlabel("recall")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig, axes


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        description="Training curves (the fine-tuning fork's three figures) and precision-recall curves of DETR runs."
    )
    parser.add_argument("runs", nargs="+", help="output folders (or their log.txt files)")
    parser.add_argument("--out_dir", default=None, help="default: the run's folder (several runs: the current one)")
    parser.add_argument(
        "--eval", nargs="+", default=None, help="COCO evaluations (default: each run's eval/latest.pth)"
    )
    parser.add_argument(
        "--naming_scheme",
        default=None,
        choices=("iter", "exp_id"),
        help="precision-recall legend: file stems (iter, default with --eval) or run folders (exp_id, default)",
    )
    parser.add_argument("--out", default=None, help="also write the one-row summary figure (make demo's curves.png)")
    a = parser.parse_args(argv)
    if a.out_dir is None:
        a.out_dir = Path(a.runs[0]) if len(a.runs) == 1 and Path(a.runs[0]).is_dir() else Path.cwd()
    written = write_fork_figures(a.runs, a.out_dir)
    if a.eval is None:
        folders = [_log_path(r).parent for r in a.runs]
        a.eval = [str(f / "eval" / "latest.pth") for f in folders if (f / "eval" / "latest.pth").is_file()]
        if len(a.eval) < len(folders):
            print(f"{len(folders) - len(a.eval)} run(s) without eval/latest.pth: not in the precision-recall figure")
        naming = a.naming_scheme or "exp_id"
    else:
        naming = a.naming_scheme or "iter"
    if a.eval:
        fig, _ = plot_precision_recall(a.eval, naming)
        written.append(_save(fig, Path(a.out_dir) / "precision_recall.png"))
    if a.out:
        written.append(plot_logs(a.runs, a.out))
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, ImportError) as e:
        sys.exit(f"error: {e}")
