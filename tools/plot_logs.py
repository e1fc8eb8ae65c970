"""Plot training curves from one or more ``log.txt`` files (one JSON line per epoch, as main.py
writes them): total loss (train and val), the main loss terms, and COCO AP / AP50 per epoch.

Like the official ``util/plot_utils.plot_logs``, without pandas/seaborn; matplotlib is an extra.
Usage: ``python tools/plot_logs.py outputs/demo [other_run ...] --out curves.png``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "log.txt" if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no log file at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_logs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write a 1x3 figure (losses, loss terms, AP) for the given runs to ``out``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run in run_dirs:
        log = read_log(run)
        name = Path(run).name
        epochs = [e["epoch"] for e in log]
        axes[0].plot(epochs, [e["train_loss"] for e in log], label=f"{name} train")
        val = [(e["epoch"], e["test_loss"]) for e in log if "test_loss" in e]
        if val:
            axes[0].plot(*zip(*val), "--", label=f"{name} val")
        for term in ("loss_ce", "loss_bbox", "loss_giou"):
            axes[1].plot(epochs, [e.get(f"train_{term}_unscaled", float("nan")) for e in log], label=f"{name} {term}")
        ap = [(e["epoch"], e["test_coco_eval_bbox"][0], e["test_coco_eval_bbox"][1]) for e in log
              if "test_coco_eval_bbox" in e]  # fmt: skip
        if ap:
            ep, ap_all, ap50 = zip(*ap)
            axes[2].plot(ep, ap50, "o-", label=f"{name} AP50")
            axes[2].plot(ep, ap_all, "s-", label=f"{name} AP")
    for ax, title in zip(axes, ("total loss", "loss terms (train, unweighted)", "held-out box AP")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[2].set_ylim(0, 1)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output folders (or log.txt files)")
    parser.add_argument("--out", default="curves.png")
    a = parser.parse_args()
    print(f"wrote {plot_logs(a.runs, a.out)}")
