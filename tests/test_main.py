"""main.py end to end: train then evaluate through the real command line, exact resumption,
bad input stopped with clear messages before training, non-finite loss handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY

import main as main_module
from util.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str]):
    return main_module.get_args_parser().parse_args(argv)


def run_main_subprocess(argv: list[str], env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *argv], cwd=ROOT, env=env, capture_output=True, text=True, **kw
    )


@pytest.fixture(scope="module")
def trained(synthetic_coco, tmp_path_factory) -> tuple[Path, str]:
    """One run through the real command line (with --ema, --tensorboard, --keep_checkpoints 1): its
    output folder and its standard output."""
    out = tmp_path_factory.mktemp("trained") / "run"
    proc = run_main_subprocess(
        [*TINY, "--coco_path", str(synthetic_coco), "--output_dir", str(out), "--epochs", "2", "--lr_drop", "1",
         "--ema", "--tensorboard", "--keep_checkpoints", "1"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


@pytest.mark.slow
def test_run_prints_its_classes_and_the_run_eta(trained):
    assert "num_classes = 4 (from max category id" in trained[1]
    assert "run eta: " in trained[1]  # progress with the whole run's ETA


@pytest.mark.slow
def test_run_logs_each_epoch_and_evaluates_the_ema_weights_too(trained):
    out, _ = trained
    log = _log(out)
    assert [e["epoch"] for e in log] == [0, 1]
    assert len(log[-1]["test_coco_eval_bbox"]) == 12 and "train_loss" in log[0]
    assert len(log[-1]["test_ema_coco_eval_bbox"]) == 12
    summary = json.loads((out / "eval.json").read_text())
    assert {"AP", "AP50", "AR100"} <= set(summary["bbox"]) and summary["epoch"] == 1
    assert {"AP", "AP50"} <= set(summary["ema"]["bbox"])


@pytest.mark.slow
def test_run_keeps_the_checkpoints_it_is_asked_to(trained):
    out, _ = trained
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and {"model", "optimizer", "lr_scheduler", "rng", "args", "model_ema"} <= set(ckpt)
    assert ckpt["id2label"] == {1: "red rectangle", 2: "green ellipse", 3: "blue triangle"}
    assert ckpt["model_ema"]["updates"] == 6  # one per optimizer step (2 epochs x 3)
    assert (out / "checkpoint0000.pth").is_file()  # extra checkpoint before the LR drop, as officially
    assert not (out / "checkpoint_prev.pth").exists()  # --keep_checkpoints 1
    best = torch.load(out / "checkpoint_best.pth", weights_only=True)
    assert best["best"]["metric"] == "AP" and "optimizer" not in best
    log = _log(out)
    assert best["best"]["value"] == max(max(e["test_coco_eval_bbox"][0], e["test_ema_coco_eval_bbox"][0]) for e in log)


@pytest.mark.slow
def test_run_writes_tensorboard_scalars_per_step_and_per_evaluation(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained[0] / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_giou", "train/lr/group0", "val_model/bbox_AP", "val_ema/bbox_AP50"} <= scalars
    assert len(events.Scalars("train/loss")) == 6


@pytest.mark.slow
def test_eval_without_the_model_flags_gives_the_same_numbers(trained, synthetic_coco, tmp_path):
    """--eval --resume takes the architecture and image size from the checkpoint, and removes what a
    killed save left in its output folder."""
    out, _ = trained
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / ".checkpoint.pth.x1y2.tmp").write_bytes(b"0" * 64)  # left by a killed save
    proc = run_main_subprocess(
        ["--coco_path", str(synthetic_coco), "--eval", "--resume", str(out / "checkpoint.pth"), "--device", "cpu",
         "--num_workers", "0", "--output_dir", str(tmp_path / "eval")]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "num_classes = 4 (from checkpoint" in proc.stdout
    assert "removed 1 temporary file(s) of interrupted saves" in proc.stdout
    assert not (tmp_path / "eval" / ".checkpoint.pth.x1y2.tmp").exists()
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["bbox"] == json.loads((out / "eval.json").read_text())["bbox"]  # same weights, same data


def _state_of(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("case", ["none", "bf16", "fp16", "cpu_opt_ins"])
def test_resume_is_exact(synthetic_coco, tmp_path, capsys, case):
    """2 epochs in one go == 1 epoch + resume for 1 more (weights, optimizer, scheduler, RNG; the
    fp16 loss scaler), in fp32 and with mixed precision. ``cpu_opt_ins``: the CPU training options
    that change the recipe (``--backbone_per_image``; with ``--fold_frozen_bn``) given to the first
    runs only: the resumed run takes them from the checkpoint."""
    amp = case if case in ("bf16", "fp16") else "none"
    base, opt_ins = TINY, []
    if case == "cpu_opt_ins":  # the official frozen BatchNorm backbone, which --backbone_per_image needs
        base = [a for a in TINY if a != "--train_backbone_all"]
        opt_ins = ["--backbone_per_image", "--fold_frozen_bn"]
    common = [*base, "--coco_path", str(synthetic_coco), "--lr_drop", "1", "--eval_every", "5", "--amp", amp]
    main_module.main(parse([*common, *opt_ins, "--epochs", "2", "--output_dir", str(tmp_path / "full")]))
    main_module.main(parse([*common, *opt_ins, "--epochs", "1", "--output_dir", str(tmp_path / "part")]))
    capsys.readouterr()
    main_module.main(
        parse([*common, "--epochs", "2", "--output_dir", str(tmp_path / "part"),
               "--resume", str(tmp_path / "part" / "checkpoint.pth")])
    )  # fmt: skip
    if opt_ins:
        assert "frozen BatchNorm layers folded" in capsys.readouterr().out
    full, part = _state_of(tmp_path / "full" / "checkpoint.pth"), _state_of(tmp_path / "part" / "checkpoint.pth")
    assert full["epoch"] == part["epoch"] == 1
    for k, v in full["model"].items():
        assert torch.equal(v, part["model"][k]), k
    for a, b in zip(full["optimizer"]["state"].values(), part["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["lr_scheduler"] == part["lr_scheduler"]
    assert full.get("scaler") == part.get("scaler") and ("scaler" in full) == (amp == "fp16")
    logs = [(tmp_path / d / "log.txt").read_text().splitlines() for d in ("full", "part")]
    assert json.loads(logs[0][1])["train_loss"] == json.loads(logs[1][1])["train_loss"]
    assert all(part["args"][flag.lstrip("-")] for flag in opt_ins)


def _expect_exit(argv: list[str], *patterns: str) -> str:
    with pytest.raises(SystemExit) as e:
        main_module.main(parse(argv))
    msg = str(e.value.code)
    for p in patterns:
        assert p in msg, msg
    return msg


def test_bad_input_is_reported_before_training(synthetic_coco, tmp_path):
    _expect_exit([*TINY, "--coco_path", str(tmp_path / "nowhere")], "nowhere", "does not exist")

    not_json = tmp_path / "notjson"
    (not_json / "annotations").mkdir(parents=True)
    (not_json / "val2017").mkdir()
    (not_json / "annotations" / "instances_val2017.json").write_text("this is not json")
    _expect_exit([*TINY, "--coco_path", str(not_json), "--eval"], "instances_val2017.json")

    # the first file read (val) has category ids up to 3: named with the annotation id
    _expect_exit(
        [*TINY, "--coco_path", str(synthetic_coco), "--num_classes", "2"],
        "instances_val2017.json",
        "annotation id",
        "num_classes=2",
    )
    _expect_exit([*TINY, "--coco_path", str(synthetic_coco), "--hidden_dim", "30", "--nheads", "4"], "--hidden_dim")

    # a checkpoint of another configuration: the error names the file and the mismatched keys
    other = tmp_path / "other.pth"
    save_checkpoint({"model": {"transformer.foo": torch.zeros(1)}, "epoch": 0}, other)
    _expect_exit(
        [*TINY, "--coco_path", str(synthetic_coco), "--num_classes", "4", "--eval", "--resume", str(other)],
        "other.pth",
        "does not fit",
        "transformer.foo",
    )


def test_non_finite_outputs_stop_with_the_state_before_the_bad_step(synthetic_coco, tmp_path, monkeypatch):
    """An infinite pixel in the second batch: the run stops naming the step, the tensor and the
    images, and checkpoint_nonfinite.pth holds the weights after the first step (before the bad one)."""
    from models.detr import DETR

    real, calls, before = DETR.forward, [], {}

    def forward(self, samples):
        if self.training:
            calls.append(1)
            if len(calls) == 2:
                before.update({k: v.clone() for k, v in self.state_dict().items()})
                samples.tensors = samples.tensors.clone()
                samples.tensors[0, 0, 5, 5] = float("inf")
        return real(self, samples)

    monkeypatch.setattr(DETR, "forward", forward)
    out = tmp_path / "nan"
    msg = _expect_exit(
        [*TINY, "--coco_path", str(synthetic_coco), "--epochs", "1", "--output_dir", str(out)],
        "non-finite values at epoch 0, iteration 1: model output pred_logits",
        "images [",
        "checkpoint_nonfinite.pth",
    )
    dump = torch.load(out / "checkpoint_nonfinite.pth", weights_only=True)
    assert (dump["epoch"], dump["iteration"]) == (0, 0)  # one good step done
    assert dump["model"].keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(dump["model"][k], v), k
    assert not (out / "checkpoint.pth").exists() and "Usual causes" in msg


# ------------------------------------------------------------------ resuming says what it does


@pytest.fixture(scope="module")
def one_epoch(synthetic_coco, tmp_path_factory) -> Path:
    """A finished 1-epoch run (lr drop after it)."""
    out = tmp_path_factory.mktemp("one_epoch")
    main_module.main(parse([*TINY, "--coco_path", str(synthetic_coco), "--epochs", "1", "--lr_drop", "1",
                            "--output_dir", str(out)]))  # fmt: skip
    return out


def test_resume_refuses_another_architecture_and_a_finished_schedule(synthetic_coco, one_epoch, tmp_path):
    ckpt = str(one_epoch / "checkpoint.pth")
    common = [*TINY, "--coco_path", str(synthetic_coco), "--output_dir", str(tmp_path), "--resume", ckpt]
    _expect_exit([*common, "--epochs", "3", "--nheads", "4"], "cannot change the architecture",
                 "--nheads 4 (the checkpoint has 2)", f"--finetune {ckpt}")  # fmt: skip
    _expect_exit([*common, "--epochs", "3", "--pre_norm"], "--pre_norm True (the checkpoint has False)")
    _expect_exit(common, "has finished epoch 1 of 1", "Raise --epochs", "--finetune")


def test_resume_applies_a_new_learning_rate(synthetic_coco, one_epoch, tmp_path, capsys):
    import shutil

    shutil.copytree(one_epoch, tmp_path / "run")
    main_module.main(parse(["--coco_path", str(synthetic_coco), "--device", "cpu", "--num_workers", "0",
                            "--output_dir", str(tmp_path / "run"), "--resume", "auto", "--epochs", "2",
                            "--lr", "5e-5", "--eval_every", "5"]))  # fmt: skip
    text = capsys.readouterr().out
    assert "--lr 5e-05 replaces the checkpoint's 0.0001 from the resumed epoch on" in text
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == 5e-5 and group["lr"] == pytest.approx(5e-7)  # two drops (lr_drop 1, inherited)
    assert ckpt["args"]["lr"] == 5e-5 and ckpt["args"]["hidden_dim"] == 32  # the rest came from the checkpoint


def test_killed_during_evaluation_then_resumed_loses_nothing(synthetic_coco, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = [*TINY, "--coco_path", str(synthetic_coco), "--epochs", "1", "--output_dir", str(out), "--resume", "auto"]
    with monkeypatch.context() as m:

        def killed(*a, **k):
            raise KeyboardInterrupt  # as if SIGKILL arrived while evaluating

        m.setattr(main_module, "evaluate", killed)
        with pytest.raises(KeyboardInterrupt):
            main_module.main(parse(argv))
    assert not (out / "log.txt").exists()
    assert torch.load(out / "checkpoint.pth", weights_only=True)["evaluated"] is False
    main_module.main(parse(argv))
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0] and len(log[0]["test_coco_eval_bbox"]) == 12 and "train_loss" in log[0]
    assert json.loads((out / "eval.json").read_text())["epoch"] == 0
    assert torch.load(out / "checkpoint.pth", weights_only=True)["evaluated"] is True  # finished, as it says


def test_unwritable_output_dir_is_refused_before_training(synthetic_coco, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_main_subprocess(
        [*TINY, "--coco_path", str(synthetic_coco), "--output_dir", str(tmp_path / "file" / "o")]
    )
    assert proc.returncode != 0 and "Start training" not in proc.stdout
    assert "error: --output_dir" in proc.stderr and "cannot be written" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_checkpoint_download_is_one_line_and_not_cached(synthetic_coco, tmp_path):
    from local_server import LocalServer

    server = LocalServer({"/detr.pth": b"<html>login required</html>"})
    try:
        env_home = tmp_path / "torch_home"
        for _ in range(2):
            proc = run_main_subprocess(
                [*TINY, "--coco_path", str(synthetic_coco), "--eval", "--resume", f"{server.url}/detr.pth"],
                env_extra={"TORCH_HOME": str(env_home)},
            )
            assert proc.returncode != 0 and "Traceback" not in proc.stderr
            assert "detr.pth is not a valid checkpoint; removed it from the cache" in proc.stderr
            assert not list(env_home.rglob("detr.pth"))
        assert server.requests == ["/detr.pth", "/detr.pth"]
    finally:
        server.close()


# ------------------------------------------------------------------ fine-tuning


def test_finetune_then_preempted_resume_continues_the_finetuning(
    synthetic_coco, one_epoch, tmp_path, monkeypatch, capsys
):
    """--finetune with another class count re-initialises the head; stopped by a signal and resumed
    with the same command (--finetune still there), the run continues and ends as an uninterrupted one."""
    from test_preemption import _interrupt_at, assert_same_run

    from util.preemption import Preempted

    def argv(out: Path) -> list[str]:
        return [*TINY, "--coco_path", str(synthetic_coco), "--finetune", str(one_epoch / "checkpoint.pth"),
                "--num_classes", "6", "--epochs", "1", "--eval_every", "5", "--output_dir", str(out),
                "--resume", "auto"]  # fmt: skip

    main_module.main(parse(argv(tmp_path / "ref")))
    text = capsys.readouterr().out
    assert "--finetune: re-initialised class_embed.weight: checkpoint (5, 32), model (7, 32)" in text
    assert "num_classes = 6 (from --num_classes)" in text
    with monkeypatch.context() as m:
        _interrupt_at(m, 0, 0, signal.SIGUSR1)
        with pytest.raises(Preempted):
            main_module.main(parse(argv(tmp_path / "run")))
    main_module.main(parse(argv(tmp_path / "run")))
    assert "is not applied again (the run continues)" in capsys.readouterr().out
    assert_same_run(tmp_path / "ref", tmp_path / "run")


@pytest.mark.slow
def test_finetuning_starts_ahead_of_training_from_scratch(tmp_path):
    """A model trained on the 3-class shapes task, fine-tuned on the 5-class one: after the same
    few iterations its loss is clearly below that of the same model trained from scratch."""
    from datasets.synthetic import generate_synthetic_coco

    generate_synthetic_coco(tmp_path / "shapes", num_train=48, num_val=2, image_size=64, verbose=False)
    generate_synthetic_coco(tmp_path / "shapes5", num_train=24, num_val=2, image_size=64, verbose=False,
                            task="shapes5")  # fmt: skip
    common = [*TINY, "--lr", "5e-4", "--lr_backbone", "5e-4", "--eval_every", "100"]
    main_module.main(parse([*common, "--coco_path", str(tmp_path / "shapes"), "--epochs", "5",
                            "--output_dir", str(tmp_path / "pretrained")]))  # fmt: skip
    losses = {}
    for name, extra in (
        ("scratch", []),
        ("finetuned", ["--finetune", str(tmp_path / "pretrained" / "checkpoint.pth")]),
    ):
        out = tmp_path / name
        main_module.main(parse([*common, "--coco_path", str(tmp_path / "shapes5"), "--epochs", "1",
                                "--output_dir", str(out), *extra]))  # fmt: skip
        losses[name] = json.loads((out / "log.txt").read_text().splitlines()[-1])["train_loss"]
    print(losses)
    assert losses["finetuned"] < 0.9 * losses["scratch"], losses


def test_fold_frozen_bn_trains_as_the_official_arithmetic(synthetic_coco, tmp_path, capsys):
    """``--fold_frozen_bn`` (frozen BatchNorm folded into the convolutions while training): the
    same weights after an epoch as the official arithmetic, up to rounding, and the same
    checkpoint keys (a run with it resumes or evaluates without it)."""
    frozen = [a for a in TINY if a != "--train_backbone_all"]  # frozen BatchNorm, stem and layer1
    common = [*frozen, "--coco_path", str(synthetic_coco), "--epochs", "1", "--eval_every", "5"]
    states = {}
    for name, extra in (("official", []), ("folded", ["--fold_frozen_bn"])):
        main_module.main(parse([*common, "--output_dir", str(tmp_path / name), *extra]))
        states[name] = _state_of(tmp_path / name / "checkpoint.pth")["model"]
    assert "--fold_frozen_bn: 20 frozen BatchNorm layers folded" in capsys.readouterr().out  # ResNet-18: all
    assert states["official"].keys() == states["folded"].keys()
    changed = 0
    for k, v in states["official"].items():
        torch.testing.assert_close(states["folded"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        changed += not torch.equal(states["folded"][k], v)
    assert changed > 0  # the backbone was trained (layer2-4), through the folded path
