"""The demo behind ``make demo``: a small detector trained from scratch on the embedded data set.

``python tools/demo.py [--model demo|deformable_detr|detr|dino]`` generates the synthetic data, runs
``main.py`` (the real command line, evaluating on the held-out split after every epoch) with a
``[demo]`` line giving the whole run's ETA after each progress line, and leaves ``log.txt``,
``checkpoint.pth``, ``eval.json``, ``curves.png`` and ``predictions.png`` in the output folder.
Recipes (``RECIPES``): ``demo`` (``make demo``: Deformable DETR, 5 epochs), ``deformable_detr``
(``make demo-deformable``: 10 epochs), ``detr`` (``make demo-detr``: DETR, 10 epochs), ``dino``
(``make demo-dino``: DINO, 5 epochs); their figures are in docs/results.md. Not in the official code.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = {"num_train": 3200, "num_val": 200, "image_size": 96, "seed": 0, "val_seed": 1}

COMMON = [
    "--backbone", "resnet18", "--backbone_weights", "none", "--train_backbone_all",
    "--batch_size", "16", "--num_workers", "1", "--device", "cpu",
    "--train_scales", "96", "--val_size", "96", "--max_size", "96", "--print_freq", "25",
    "--hidden_dim", "128", "--nheads", "8", "--enc_layers", "1", "--dec_layers", "3",
    "--dim_feedforward", "512", "--dropout", "0.0", "--lr", "2e-4", "--lr_backbone", "2e-4",
]  # fmt: skip

DEFORMABLE = ["--model", "deformable_detr", "--num_queries", "30", "--num_feature_levels", "3"]
# DINO scaled down as DEFORMABLE scales the official Deformable DETR (300 queries -> 30, 4 levels -> 3,
# 6+6 layers -> 1+3): 30 queries (900 would exceed the 49 encoder tokens of a 96-px image at 3 levels,
# from which the queries are selected), --dn_number 3 (official 100; below 50 the official rule makes
# 2 x 3 = 6 groups of positive and negative copies of every object), the class-loss weight of the
# Deformable demo (2.0; DINO's own is 1.0) so that the two runs weigh their losses alike, and the same
# 100 detections per image kept by the post-processing. Why these: docs/results.md.
DINO = ["--model", "dino", "--num_queries", "30", "--num_feature_levels", "3", "--dn_number", "3",
        "--cls_loss_coef", "2.0", "--num_select", "100"]  # fmt: skip

# All recipes run on 2 CPU cores without ImageNet weights (COMMON): a ResNet-18 trained from scratch
# with learning BatchNorm (--train_backbone_all), hidden 128, 1 encoder and 3 decoder layers, 96 px
# images, batch 16. "demo" is Deformable DETR (3 feature levels, 30 queries, 5 epochs, LR drop after
# the 4th): multi-scale deformable attention converges several times faster than DETR's attention, so
# it is the one that reaches a held-out AP50 above 0.9 within the demo's budget of 10 minutes, set-up
# included. "deformable_detr" is the same model for 10 epochs; "detr" is DETR with 10 queries.
RECIPES = {
    "demo": [*DEFORMABLE, "--epochs", "5", "--lr_drop", "4"],
    "deformable_detr": [*DEFORMABLE, "--epochs", "10", "--lr_drop", "8"],
    "detr": ["--model", "detr", "--num_queries", "10", "--epochs", "10", "--lr_drop", "8"],
    "dino": [*DINO, "--epochs", "5", "--lr_drop", "4"],
}
OUT_DIRS = {"demo": "demo", "deformable_detr": "demo_deformable", "detr": "demo_detr", "dino": "demo_dino"}
# Deformable DETR's sigmoid (focal) scores run lower than DETR's softmax ones: the score from which
# predictions.png draws a box, per recipe (chosen by looking at the pictures: few misses, few duplicates;
# dino's is Deformable DETR's: on the full run's pictures a few duplicates score 0.41-0.46 at 0.4, and
# 0.5 would drop true objects scoring 0.45-0.47).
THRESHOLDS = {"demo": 0.4, "deformable_detr": 0.4, "detr": 0.5, "dino": 0.4}
# On a CPU with bfloat16 units (AVX512-BF16 or AMX) the "demo" and "dino" recipes train with these
# (faster per iteration: docs/results.md); elsewhere in fp32, where bf16 would be emulated and slower.
# Either way the run is deterministic for its seed; --fp32 forces fp32. The other recipes train in
# fp32 (their figures in docs/results.md are fp32 ones).
FAST_CPU = ["--amp", "bf16", "--fused_optimizer", "--channels_last"]
BF16_RECIPES = ("demo", "dino")


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX512-BF16 or AMX flags; Linux only)."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


_PROGRESS = re.compile(r"^Epoch: \[(\d+)\]\s+\[\s*(\d+)/(\d+)\]")


def _flag(argv: list[str], name: str) -> str:
    """The value of the last ``name`` flag in ``argv`` (later flags win, as with argparse)."""
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


class Progress:
    """The whole run's ETA from ``main.py``'s progress lines ``Epoch: [e] [i/n]``.

    Training speed is measured over training time only; an evaluation (with the checkpoint
    written before it) is the time between an epoch's last progress line and the next epoch's
    first, and is assumed, until one has been seen, to cost as much as ``eval_guess`` iterations.
    """

    def __init__(self, epochs: int, start: float, tail_seconds: float = 10.0, eval_guess: int = 20) -> None:
        self.epochs, self.start, self.tail = epochs, start, tail_seconds
        self.eval_guess = eval_guess
        self.train_seconds = 0.0
        self.iters_done = 0
        self.eval_seconds: list[float] = []
        self._last: tuple[int, int, int, float] | None = None  # epoch, iteration, total, time

    def update(self, line: str, now: float) -> str | None:
        """Feed one output line; returns the ``[demo]`` progress line to print, if any."""
        m = _PROGRESS.match(line)
        if m is None:
            return None
        epoch, it, total = (int(g) for g in m.groups())
        if self._last is not None:
            last_epoch, last_it, last_total, last_time = self._last
            if epoch == last_epoch:
                self.train_seconds += now - last_time
                self.iters_done += it - last_it
            elif last_it == last_total - 1:  # the evaluation of last_epoch, then one iteration of this one
                per_iter = self.train_seconds / max(self.iters_done, 1)
                self.eval_seconds.append(max(0.0, now - last_time - per_iter * (it + 1)))
                self.train_seconds += per_iter * (it + 1)
                self.iters_done += it + 1
        self._last = (epoch, it, total, now)
        if self.iters_done == 0:
            return f"[demo] epoch {epoch + 1}/{self.epochs}: started; the ETA follows after a few iterations"
        per_iter = self.train_seconds / self.iters_done
        per_eval = sum(self.eval_seconds) / len(self.eval_seconds) if self.eval_seconds else self.eval_guess * per_iter
        iters_left = (total - it - 1) + (self.epochs - epoch - 1) * total
        left = iters_left * per_iter + (self.epochs - epoch) * per_eval + self.tail
        done = 100 * (epoch * total + it + 1) / (self.epochs * total)
        return (
            f"[demo] epoch {epoch + 1}/{self.epochs}, {done:3.0f}% of training, {per_iter:.2f} s/iteration: "
            f"{_duration(now - self.start)} elapsed, about {_duration(left)} left"
        )


def run_main(cmd: list[str], epochs: int, start: float) -> None:
    """Run ``main.py`` with its output passed through, adding the ``[demo]`` ETA lines."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    progress = Progress(epochs, start)
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        assert p.stdout is not None
        for line in p.stdout:
            print(line, end="", flush=True)
            message = progress.update(line, time.time())
            if message:
                print(message, flush=True)
    if p.returncode:
        raise SystemExit(f"error: main.py failed with exit status {p.returncode}: {' '.join(cmd)}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Train and evaluate a small detector on the embedded data set.")
    parser.add_argument("--model", default="demo", choices=sorted(RECIPES), help="recipe (see the module docstring)")
    parser.add_argument("--out", default=None, help="default outputs/<the recipe's folder> (OUT_DIRS)")
    parser.add_argument("--data", default=str(ROOT / "outputs" / "data" / "synthetic"))
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (LR drop at 80%%)")
    parser.add_argument("--started", type=float, default=None, help="Unix time the set-up began (make demo passes it)")
    parser.add_argument("--fp32", action="store_true", help="train in fp32 even on a CPU with bfloat16 units")
    a, extra = parser.parse_known_args()
    out = Path(a.out or ROOT / "outputs" / OUT_DIRS[a.model])
    start = time.time()
    setup = start - a.started if a.started else None

    from datasets.synthetic import generate_synthetic_coco

    generate_synthetic_coco(a.data, **DATA)
    data_done = time.time()

    out.mkdir(parents=True, exist_ok=True)
    for stale in ("log.txt", "eval.json"):  # a fresh run, not appended to an old one
        (out / stale).unlink(missing_ok=True)
    recipe = list(RECIPES[a.model])
    if a.model in BF16_RECIPES and not a.fp32 and cpu_has_bf16():
        print("CPU with bfloat16 units: training with " + " ".join(FAST_CPU) + " (--fp32 to turn off)", flush=True)
        recipe += FAST_CPU
    if a.epochs is not None:
        recipe += ["--epochs", str(a.epochs), "--lr_drop", str(max(1, round(a.epochs * 0.8)))]
    cmd = [sys.executable, "-u", str(ROOT / "main.py"), *COMMON, *recipe,
           "--coco_path", a.data, "--output_dir", str(out), "--overwrite_output_dir", *extra]  # fmt: skip
    print("running:", " ".join(cmd), flush=True)
    run_main(cmd, int(_flag(cmd, "--epochs")), a.started or start)  # elapsed: since the set-up began
    train_done = time.time()

    threshold = THRESHOLDS[a.model]
    from tools.plot_logs import plot_logs
    from tools.visualize import draw_predictions

    plot_logs([out], out / "curves.png")
    data = Path(a.data)
    draw_predictions(out / "checkpoint.pth", data / "val2017", data / "annotations" / "instances_val2017.json",
                     out / "predictions.png", num_images=12, threshold=threshold)  # fmt: skip
    summary = json.loads((out / "eval.json").read_text())
    end = time.time()
    parts = [("set-up", setup)] if setup is not None else []
    parts += [("data", data_done - start), ("training and evaluation", train_done - data_done),
              ("pictures", end - train_done)]  # fmt: skip
    total = end - (a.started or start)
    print(
        f"\nDemo finished in {_duration(total)} ({', '.join(f'{k} {_duration(v)}' for k, v in parts)}).\n"
        f"Held-out box AP50 = {summary['AP50']:.3f}, AP = {summary['AP']:.3f} ({DATA['num_val']} validation images)\n"
        f"  {out}/eval.json        COCO metrics by name\n"
        f"  {out}/curves.png       losses and AP per epoch\n"
        f"  {out}/predictions.png  predictions scoring >= {threshold} on validation images, ground truth dashed\n"
        f"  {out}/log.txt, {out}/checkpoint.pth"
    )


if __name__ == "__main__":
    main()
