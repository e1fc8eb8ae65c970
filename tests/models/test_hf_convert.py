"""Conversion to and from Hugging Face transformers, through real transformers models built from
tiny configs with random weights (nothing downloaded): the same outputs both ways, loading with
no missing or unexpected key, 4.x and 5.x spellings, and clear errors for what does not fit."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from golden import fill_value, load_golden

from models.hf_convert import (
    ARCH_FLAGS,
    ConversionError,
    arch_from_checkpoint,
    checkpoint_from_hf,
    checkpoint_to_hf,
    convert_from_hf,
)
from util.misc import NestedTensor

transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")

DETR = {"d_model": 32, "encoder_attention_heads": 8, "decoder_attention_heads": 8, "encoder_layers": 1,
        "decoder_layers": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 5}  # fmt: skip
DEFORMABLE = {"d_model": 64, "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_layers": 1,
              "decoder_layers": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 5,
              "encoder_n_points": 2, "decoder_n_points": 2, "two_stage_num_proposals": 5}  # fmt: skip
TIMM_R18 = {"backbone": "resnet18", "use_pretrained_backbone": False}
HF_R18 = {"use_timm_backbone": False, "backbone_config": {"model_type": "resnet", "depths": [2, 2, 2, 2],
          "hidden_sizes": [64, 128, 256, 512], "layer_type": "basic",
          "out_features": ["stage1", "stage2", "stage3", "stage4"]}}  # fmt: skip

CASES = {
    "detr": ("DetrForObjectDetection", {**DETR, **TIMM_R18}, "timm"),
    "detr_segm_hf_resnet_learned_pos": ("DetrForSegmentation", {**DETR, **HF_R18, "position_embedding_type": "learned"},
                                        "transformers"),
    "deformable": ("DeformableDetrForObjectDetection", {**DEFORMABLE, **TIMM_R18}, "timm"),
    "deformable_single_scale_dc5": ("DeformableDetrForObjectDetection",
                                    {**DEFORMABLE, **TIMM_R18, "num_feature_levels": 1, "dilation": True}, "timm"),
    "deformable_refine_two_stage": ("DeformableDetrForObjectDetection",
                                    {**DEFORMABLE, **TIMM_R18, "with_box_refine": True, "two_stage": True}, "timm"),
}  # fmt: skip

ARCH_DETR = {"model": "detr", "backbone": "resnet18", "dilation": False, "position_embedding": "sine",
             "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 32, "dropout": 0.1,
             "num_queries": 4, "num_classes": 8, "masks": False, "pre_norm": False, "num_feature_levels": 4,
             "dec_n_points": 4, "enc_n_points": 4, "with_box_refine": False, "two_stage": False}  # fmt: skip

IMAGES = torch.rand(2, 3, 64, 96)
PIXEL_MASK = torch.ones(2, 64, 96, dtype=torch.long)
PIXEL_MASK[1, 48:] = 0
PIXEL_MASK[1, :, 64:] = 0


def _hf_model(architecture: str, kwargs: dict):
    config_cls = transformers.DeformableDetrConfig if "Deformable" in architecture else transformers.DetrConfig
    model = getattr(transformers, architecture)(config_cls(num_labels=4, **kwargs)).eval()
    # Random values everywhere (the default initialisation leaves zeros that would hide a wrong mapping).
    state = model.state_dict()
    model.load_state_dict({k: fill_value(k, tuple(v.shape)) if v.is_floating_point() else v for k, v in state.items()})
    return model


def _outputs(out) -> dict[str, torch.Tensor]:
    if isinstance(out, dict) and "pred_logits" in out:
        return {"logits": out["pred_logits"], "pred_boxes": out["pred_boxes"], **({"pred_masks": out["pred_masks"]}
                if "pred_masks" in out else {})}  # fmt: skip
    return {k: getattr(out, k) for k in ("logits", "pred_boxes", "pred_masks") if getattr(out, k, None) is not None}


def _max_diffs(a: dict, b: dict) -> dict[str, float]:
    assert set(a) == set(b)
    return {k: float((a[k] - b[k]).abs().max()) for k in a}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_through_transformers(case: str, tmp_path: Path) -> None:
    from models.loading import build_model_from_checkpoint

    architecture, kwargs, backbone_format = CASES[case]
    hf = _hf_model(architecture, kwargs)
    hf.save_pretrained(tmp_path / "hf")
    with torch.no_grad():
        reference = _outputs(hf(pixel_values=IMAGES, pixel_mask=PIXEL_MASK))

    # transformers -> ours: main.py's rebuild from the checkpoint's flags, the same numbers
    ckpt = convert_from_hf(tmp_path / "hf", tmp_path / "ours.pth")
    assert ckpt["id2label"] == {i: f"LABEL_{i}" for i in range(4)} and ckpt["args"]["num_classes"] == 4
    ours = build_model_from_checkpoint(tmp_path / "ours.pth").model
    with torch.no_grad():
        mine = _outputs(ours(NestedTensor(IMAGES, PIXEL_MASK == 0)))
    from_hf = _max_diffs(mine, reference)
    assert max(from_hf.values()) < 1e-4, from_hf

    # ours -> transformers: from_pretrained finds every key, and the same numbers again
    checkpoint_to_hf(tmp_path / "ours.pth", tmp_path / "back", backbone_format=backbone_format)
    back, info = getattr(transformers, architecture).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        theirs = _outputs(back.eval()(pixel_values=IMAGES, pixel_mask=PIXEL_MASK))
    to_hf = _max_diffs(theirs, mine)
    assert max(to_hf.values()) < 1e-4, to_hf
    print(f"{case}: max |ours - transformers| from_hf {from_hf}, to_hf {to_hf}")
    if case == "detr":  # the processor config ships along
        processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "back")
        assert type(processor).__name__ == "DetrImageProcessor"


@pytest.fixture(scope="module")
def detr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf_detr")
    hf = _hf_model("DetrForObjectDetection", {**DETR, **TIMM_R18})
    hf.save_pretrained(folder)
    torch.save(hf.state_dict(), folder / "in_memory_names.pt")  # transformers 5's own spelling
    return folder


def test_transformers_4_config_and_5_in_memory_names(detr_folder: Path, tmp_path: Path) -> None:
    reference = checkpoint_from_hf(detr_folder)
    config = json.loads((detr_folder / "config.json").read_text())
    assert "o_proj" in " ".join(torch.load(detr_folder / "in_memory_names.pt")), "5.x renamed its modules"
    v4 = {k: v for k, v in config.items() if k != "backbone_config"}
    v4.update(use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=True)  # a 4.x config.json
    (tmp_path / "config.json").write_text(json.dumps(v4))
    shutil.copy(detr_folder / "in_memory_names.pt", tmp_path / "pytorch_model.bin")
    converted = checkpoint_from_hf(tmp_path)
    assert converted["args"] == reference["args"]
    assert converted["model"].keys() == reference["model"].keys()
    assert all(torch.equal(converted["model"][k], v) for k, v in reference["model"].items())


def test_config_weights_mismatch_names_file_and_field(detr_folder: Path, tmp_path: Path) -> None:
    shutil.copytree(detr_folder, tmp_path / "bad")
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64}))
    with pytest.raises(ConversionError, match=r"model\.safetensors does not fit .*config\.json.*fc1\.weight.*ffn_dim"):
        checkpoint_from_hf(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "decoder_layers": 1}))
    with pytest.raises(ConversionError, match=r"not in the model .* model\.decoder\.layers\.1\..*decoder_layers"):
        checkpoint_from_hf(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "architectures": ["DetrForTextGeneration"]}))
    with pytest.raises(ConversionError, match=r"config\.json: field 'architectures'.*not supported"):
        checkpoint_from_hf(tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match="no weights"):
        checkpoint_from_hf(tmp_path / "bad")


def test_unsupported_and_never_partial(detr_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.hf_convert as hf_convert

    ckpt = checkpoint_from_hf(detr_folder)
    prenorm = {**ckpt, "model": {**ckpt["model"], "transformer.encoder.norm.weight": torch.ones(32),
                                 "transformer.encoder.norm.bias": torch.zeros(32)}}  # fmt: skip
    with pytest.raises(ConversionError, match="pre_norm"):
        checkpoint_to_hf(prenorm, tmp_path / "out")
    effnet = {**ckpt["args"], "backbone": "timm:efficientnet_b0"}
    model = hf_convert.build_model_from_args(effnet)
    with pytest.raises(ConversionError, match=r"timm:efficientnet_b0 has \['FrozenBatchNormAct2d'\] layers"):
        checkpoint_to_hf({"model": model.state_dict(), "args": effnet}, tmp_path / "out")
    with pytest.raises(ConversionError, match="--enc_layers 3 in its settings but 1 in its weights"):
        checkpoint_to_hf({**ckpt, "args": {**ckpt["args"], "enc_layers": 3}}, tmp_path / "out")

    checkpoint_to_hf(ckpt, tmp_path / "out")  # an existing folder is replaced only by a complete one
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hf_convert, "_preprocessor_config", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint_to_hf(ckpt, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


@pytest.mark.parametrize("fixture", ["detr", "detr_panoptic", "deformable", "deformable_single_scale",
                                     "deformable_refine_two_stage"])  # fmt: skip
def test_flags_read_off_official_checkpoints(fixture: str) -> None:
    """The official models' state-dict layouts (golden fixtures): every architecture flag the weights
    show is read off them; only what they cannot show (backbone, heads, dropout, two-stage queries) comes from args."""
    golden = load_golden(f"{fixture}_tiny.pt")
    config = golden["config"]
    state = {k: torch.zeros(shape) for k, shape in golden["state_dict_shapes"]}
    given = {
        k: config[k] for k in ("backbone", "nheads", "dropout", "num_queries" if config.get("two_stage") else "nheads")
    }
    arch = arch_from_checkpoint({"model": state, "args": given}, fixture)
    assert set(arch) >= set(ARCH_FLAGS) and arch["num_classes"] == 20  # the official 'custom' default
    for flag in ARCH_FLAGS:
        if flag in config:
            assert arch[flag] == config[flag], flag
    assert arch["model"] == ("deformable_detr" if fixture.startswith("deformable") else "detr")


def _field_types_ok(config: dict, config_cls: type) -> list[str]:
    """The fields of ``config`` whose values are not of the type ``config_cls`` annotates (its own
    fields: the model's; the base class's are generic)."""
    import inspect
    import typing

    hints = inspect.get_annotations(config_cls)
    wrong = []
    for field, value in config.items():
        if field not in hints or isinstance(hints[field], str) or hints[field] is typing.Any:
            continue
        allowed = tuple(typing.get_origin(t) or t for t in typing.get_args(hints[field]) or (hints[field],))
        allowed = tuple(t for t in allowed if isinstance(t, type))
        if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
            wrong.append(f"{field}={value!r} ({hints[field]})")
    return wrong


@pytest.mark.parametrize("model", ["detr", "deformable_detr"])
def test_coco_ids_with_gaps_and_float_loss_flags(model: str, tmp_path: Path) -> None:
    """A checkpoint as main.py saves it for COCO-format data (1-based ids with gaps, loss flags as
    floats): the same ids on both sides, gaps named "N/A", every config field of the type
    transformers 5 annotates, and a processor resizing as the checkpoint's --val_size/--max_size."""
    from models.hf_convert import build_model_from_args

    arch = ({**ARCH_DETR} if model == "detr" else {**ARCH_DETR, "model": model, "num_feature_levels": 2, "dec_layers": 2,
            "enc_n_points": 2, "dec_n_points": 2})  # fmt: skip
    names = {1: "cat", 4: "dog", 7: "bird"}
    losses = {"set_cost_class": 2.0, "set_cost_bbox": 5.0, "set_cost_giou": 2.0, "bbox_loss_coef": 5.0,
              "giou_loss_coef": 2.0, "eos_coef": 0.1, "focal_alpha": 0.25, "mask_loss_coef": 1.0, "dice_loss_coef": 1.5}  # fmt: skip
    args = {**arch, **losses, "val_size": 64, "max_size": 96}
    ckpt = {"model": build_model_from_args(arch).state_dict(), "args": args, "id2label": names}
    out = checkpoint_to_hf(ckpt, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(i): names.get(i, "N/A") for i in range(8)}
    config_cls = transformers.DetrConfig if model == "detr" else transformers.DeformableDetrConfig
    assert not _field_types_ok(config, config_cls)
    assert config["class_cost"] == 2 and "dice_loss_coefficient" not in config  # 1.5 is not an int there
    hf = transformers.AutoModelForObjectDetection.from_pretrained(out)
    assert hf.config.id2label[4] == "dog" and hf.config.id2label[0] == "N/A" and hf.config.num_labels == 8
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    assert type(processor).__name__ == ("DetrImageProcessor" if model == "detr" else "DeformableDetrImageProcessor")
    assert processor.size.shortest_edge == 64 and processor.size.longest_edge == 96
    back = checkpoint_from_hf(out)
    assert back["id2label"] == {i: names.get(i, "N/A") for i in range(8)}
    with pytest.raises(ConversionError, match=r"checkpoint: id2label has the id 8 \('fish'\) outside 0\.\.7"):
        checkpoint_to_hf({**ckpt, "id2label": {**names, 8: "fish"}}, tmp_path / "bad")
    if model == "deformable_detr":  # what transformers 5 cannot load is refused, naming the flag
        one = {**arch, "dec_layers": 1}
        with pytest.raises(ConversionError, match=r"--dec_layers 1: transformers 5's DeformableDetrForObjectDetection"):
            checkpoint_to_hf({"model": build_model_from_args(one).state_dict(), "args": one}, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_shard_names_stay_in_their_folder(detr_folder: Path, tmp_path: Path) -> None:
    """A sharded folder's index may only name files inside that folder (issue 21)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sharded"
    shutil.copytree(detr_folder, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, folder / "part-1.safetensors")
    (folder / "sub").mkdir()
    save_file({k: state[k] for k in keys[half:]}, folder / "sub" / "part-2.safetensors")
    weight_map = {k: "part-1.safetensors" if i < half else "sub/part-2.safetensors" for i, k in enumerate(keys)}
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    reference, sharded = checkpoint_from_hf(detr_folder)["model"], checkpoint_from_hf(folder)["model"]
    assert sharded.keys() == reference.keys() and all(torch.equal(sharded[k], v) for k, v in reference.items())
    outside = tmp_path / "outside.safetensors"
    shutil.copy(folder / "part-1.safetensors", outside)
    for name in ("../outside.safetensors", str(outside), "sub/../../outside.safetensors", index.name):
        index.write_text(json.dumps({"weight_map": {**weight_map, keys[0]: name}}))
        with pytest.raises(
            ConversionError, match=rf"index\.json: field 'weight_map' names the shard '{re.escape(name)}'"
        ):
            checkpoint_from_hf(folder)


@pytest.mark.parametrize("dataset_file", ["voc", "yolo"])
def test_voc_and_yolo_checkpoints_load_in_transformers(dataset_file: str, tmp_path: Path) -> None:
    """Checkpoints as main.py saves them for VOC (0-based ids, 20 classes) and YOLO data: every
    setting from util.config, the loss weights as floats; transformers 5 loads the export."""
    from datasets.voc import VOC_CLASSES
    from models import build_model
    from util import config

    flags = ["--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim", "32", "--nheads", "2",
             "--enc_layers", "1", "--dec_layers", "2", "--dim_feedforward", "32", "--num_queries", "4",
             "--dataset_file", dataset_file, "--num_classes", "20" if dataset_file == "voc" else "3"]  # fmt: skip
    args = config.resolve(config.get_args_parser().parse_args(flags))
    names = dict(enumerate(VOC_CLASSES)) if dataset_file == "voc" else {0: "car", 1: "bus", 2: "bike"}
    ckpt = {"model": build_model(args)[0].state_dict(), "args": config.saved(args), "id2label": names}
    assert isinstance(ckpt["args"]["set_cost_class"], float)
    out = checkpoint_to_hf(ckpt, tmp_path / "hf")
    hf, info = transformers.DetrForObjectDetection.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()) and hf.config.id2label == names
