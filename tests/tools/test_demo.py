"""``tools.demo``: the whole run's ETA, and its recipes."""

from __future__ import annotations

from tools.demo import Progress, cpu_has_bf16


def test_progress_eta_covers_the_remaining_epochs_and_evaluations():
    p = Progress(epochs=2, start=0.0, tail_seconds=0.0)
    assert "ETA follows" in p.update("Epoch: [0]  [ 0/10]  eta: 0:00:09", 1.0)
    line = p.update("Epoch: [0]  [ 9/10]  eta: 0:00:00", 10.0)  # 1 s per iteration
    assert "about 0:00:" in line and p.iters_done == 9
    # 10 more iterations + 2 evaluations guessed at 20 iterations each (none seen yet)
    assert line.endswith("about 0:00:50 left")
    line = p.update("Epoch: [1]  [ 0/10]  eta: 0:00:09", 16.0)  # 5 s evaluation + 1 iteration
    assert p.eval_seconds == [5.0] and line.endswith("about 0:00:14 left")  # 9 iterations + 1 evaluation
    assert p.update("Test:  [0/2]", 17.0) is None


def test_demo_detects_bfloat16_units(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert not cpu_has_bf16(str(cpuinfo))
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_bf16(str(cpuinfo))
    assert not cpu_has_bf16(str(tmp_path / "absent"))


def test_every_recipe_is_a_valid_run_and_dino_shares_the_deformable_demo_setup():
    import main as main_module
    from tools.demo import COMMON, DATA, RECIPES, _flag
    from util.config import RunConfig

    configs = {}
    for name, recipe in RECIPES.items():
        args = main_module.get_args_parser().parse_args([*COMMON, *recipe, "--coco_path", "data"])
        configs[name] = RunConfig.from_args(args)
    dino, deformable = configs["dino"].model, configs["demo"].model
    assert dino.model == "dino" and deformable.model == "deformable_detr" and dino.dn_number == 10
    for flag in ("--epochs", "--lr_drop"):
        assert _flag(RECIPES["dino"], flag) == _flag(RECIPES["demo"], flag), flag
    for field in ("backbone", "hidden_dim", "enc_layers", "dec_layers", "num_queries", "num_feature_levels"):
        assert getattr(dino, field) == getattr(deformable, field), field
    # two-stage queries are selected among the encoder tokens: 3 levels of a 96-px image give 6x6 + 3x3 + 2x2
    assert dino.num_queries <= 36 + 9 + 4 and DATA["image_size"] == 96
