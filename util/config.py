"""The run configuration: every setting of ``main.py`` declared once, in four typed parts.

Each setting is a field of ``ModelConfig``, ``TrainConfig``, ``DataConfig`` or ``RuntimeConfig``
with its type, its default (or its ``--model`` preset in ``PRESETS``), its kind and one line of
help. The argparse parser (``get_args_parser``), the values stored in checkpoints
(``RunConfig.saved``), what a checkpoint supplies to a new run (``inherit``) and the builders'
arguments (``ModelConfig.from_args``, ``DataConfig.from_args``) are all derived from the fields.
Adding a flag is adding a field. Differs from the official code: the official flags and defaults
are kept, but ``--model deformable_detr`` switches the defaults of ``PRESETS`` in one parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Kinds of setting: how a checkpoint's value and a given value meet.
ARCHITECTURE = "architecture"  # the model's weights and shapes: from the checkpoint; a resumed run refuses a change
SCHEDULE = "schedule"  # optimisation schedule: a resumed run applies a changed value from its epoch on
RECIPE = "recipe"  # the rest of how a run trains (losses, EMA, precision): saved and resumed
DATA = "data"  # what to read and how: saved and resumed
EVALUATION = "evaluation"  # image sizes of evaluation: also taken by --eval of a checkpoint
RUNTIME = "runtime"  # where and how this process runs: never saved, never inherited
KINDS = (ARCHITECTURE, SCHEDULE, RECIPE, DATA, EVALUATION, RUNTIME)

MODELS = ("detr", "deformable_detr", "dino")
MODEL_NAMES = {"detr": "DETR", "deformable_detr": "Deformable DETR", "dino": "DINO"}
# The defaults that depend on --model: the official values of each repository.
PRESETS: dict[str, dict[str, Any]] = {
    "detr": {
        "lr": 1e-4, "lr_backbone": 1e-5, "epochs": 300, "lr_drop": 200, "num_queries": 100,
        "dim_feedforward": 2048, "set_cost_class": 1.0, "lr_backbone_names": ["backbone"],
        "lr_linear_proj_names": [], "dropout": 0.1, "cls_loss_coef": 2.0,
    },
    "deformable_detr": {
        "lr": 2e-4, "lr_backbone": 2e-5, "epochs": 50, "lr_drop": 40, "num_queries": 300,
        "dim_feedforward": 1024, "set_cost_class": 2.0, "lr_backbone_names": ["backbone.0"],
        "lr_linear_proj_names": ["reference_points", "sampling_offsets"], "dropout": 0.1, "cls_loss_coef": 2.0,
    },
    "dino": {  # DINO-4scale (IDEA-Research/DINO config/DINO/DINO_4scale.py); 5 scales: --num_feature_levels 5
        "lr": 1e-4, "lr_backbone": 1e-5, "epochs": 12, "lr_drop": 11, "num_queries": 900,
        "dim_feedforward": 2048, "set_cost_class": 2.0, "lr_backbone_names": ["backbone"],
        "lr_linear_proj_names": [], "dropout": 0.0, "cls_loss_coef": 1.0,  # param_dict_type 'default'
    },
}  # fmt: skip
DEFORMABLE = ("deformable_detr", "dino")  # the models with deformable attention and focal loss
DN_SETTINGS = ("dn_number", "dn_label_noise_ratio", "dn_box_noise_scale")  # --model dino, or deformable_detr --dn

OFFICIAL_TRAIN_SCALES: tuple[int, ...] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
CHECK_IMAGES_LEVELS = ("none", "header", "full")


def setting(
    default: Any,
    kind: str,
    help: str,
    *,
    flag: str | None = None,
    choices: Sequence[Any] | None = None,
    only: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field that is a command-line setting. ``default=None`` with the name in
    ``PRESETS``: the ``--model`` preset. ``flag``: a flag name other than ``--<name>`` (for
    ``--no_aux_loss``, whose default ``True`` becomes ``False`` when given). ``only``: the
    ``--model`` values that read it (another model refuses a value other than its default)."""
    assert kind in KINDS, kind
    assert only is None or set(only) <= set(MODELS), only
    metadata = {"kind": kind, "help": help, "flag": flag, "choices": tuple(choices) if choices else None, "only": only}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def derived(default: Any = None) -> Any:
    """A field that is not a flag: worked out from other settings or from the data."""
    return field(default=default, metadata={"kind": None})


@dataclass(frozen=True)
class ModelConfig:
    """The detector: architecture, matcher and loss. ``models.build_model`` takes it."""

    model: str = setting("detr", ARCHITECTURE, "detector family", choices=MODELS)
    num_classes: int | None = setting(
        None, ARCHITECTURE, "max category id + 1; default: the checkpoint's, else the data's"
    )
    backbone: str = setting("resnet50", ARCHITECTURE, "torchvision ResNet (resnet18..152) or timm:<timm model name>")
    dilation: bool = setting(False, ARCHITECTURE, "replace stride with dilation in the last block (DC5)")
    position_embedding: str = setting(
        "sine", ARCHITECTURE, "position encoding", choices=("sine", "learned", "v2", "v3")
    )
    position_embedding_scale: float = setting(2 * math.pi, ARCHITECTURE, "scale of the sine position encoding")
    num_feature_levels: int = setting(
        4, ARCHITECTURE, "Deformable DETR, DINO: number of feature levels", only=DEFORMABLE
    )
    train_backbone_all: bool = setting(
        False, ARCHITECTURE, "train every backbone stage, BatchNorm included (no ImageNet weights)"
    )
    enc_layers: int = setting(6, ARCHITECTURE, "encoder layers")
    dec_layers: int = setting(6, ARCHITECTURE, "decoder layers")
    dim_feedforward: int | None = setting(None, ARCHITECTURE, "feed-forward width of the transformer layers")
    hidden_dim: int = setting(256, ARCHITECTURE, "transformer width")
    nheads: int = setting(8, ARCHITECTURE, "attention heads")
    num_queries: int | None = setting(None, ARCHITECTURE, "object queries")
    pre_norm: bool = setting(False, ARCHITECTURE, "DETR: layer norm before attention", only=("detr",))
    dec_n_points: int = setting(
        4, ARCHITECTURE, "Deformable DETR, DINO: sampling points per head and level, decoder", only=DEFORMABLE
    )
    enc_n_points: int = setting(
        4, ARCHITECTURE, "Deformable DETR, DINO: sampling points per head and level, encoder", only=DEFORMABLE
    )
    with_box_refine: bool = setting(
        False, ARCHITECTURE, "Deformable DETR: iterative box refinement", only=("deformable_detr",)
    )
    two_stage: bool = setting(
        False, ARCHITECTURE, "Deformable DETR: two-stage (needs --with_box_refine)", only=("deformable_detr",)
    )
    masks: bool = setting(False, ARCHITECTURE, "train the segmentation head")
    dn: bool = setting(
        False,
        ARCHITECTURE,
        "Deformable DETR: train with DINO's contrastive denoising queries",
        only=("deformable_detr",),
    )
    dropout: float | None = setting(None, RECIPE, "dropout in the transformer")
    aux_loss: bool = setting(True, RECIPE, "disable the decoder layers' auxiliary losses", flag="--no_aux_loss")
    set_cost_class: float | None = setting(None, RECIPE, "matching cost of the class")
    set_cost_bbox: float = setting(5.0, RECIPE, "matching cost of the L1 box distance")
    set_cost_giou: float = setting(2.0, RECIPE, "matching cost of the box GIoU")
    mask_loss_coef: float = setting(1.0, RECIPE, "weight of the mask focal loss")
    dice_loss_coef: float = setting(1.0, RECIPE, "weight of the mask dice loss")
    cls_loss_coef: float | None = setting(
        None, RECIPE, "Deformable DETR, DINO: weight of the class focal loss", only=DEFORMABLE
    )
    bbox_loss_coef: float = setting(5.0, RECIPE, "weight of the L1 box loss")
    giou_loss_coef: float = setting(2.0, RECIPE, "weight of the GIoU box loss")
    eos_coef: float = setting(0.1, RECIPE, "DETR: relative class weight of no-object", only=("detr",))
    focal_alpha: float = setting(0.25, RECIPE, "Deformable DETR, DINO: alpha of the focal loss", only=DEFORMABLE)
    num_select: int = setting(300, EVALUATION, "DINO: detections kept per image by the post-processing", only=("dino",))
    dn_number: int = setting(100, RECIPE, "DINO: denoising queries (2 per target and group)", only=("dino",))
    dn_label_noise_ratio: float = setting(
        0.5, RECIPE, "DINO: twice the fraction of denoising labels changed", only=("dino",)
    )
    dn_box_noise_scale: float = setting(
        0.4, RECIPE, "DINO: box noise of the denoising queries, in half box sizes", only=("dino",)
    )
    backbone_per_image: bool = setting(
        False, RECIPE, "backbone on each image at its own size: results independent of the batch"
    )
    frozen_weights: str | None = setting(
        None, RUNTIME, "a trained box model whose weights stay frozen: only the mask head trains"
    )
    backbone_weights: str = setting("torchvision", RUNTIME, "ImageNet weights: torchvision, timm, a .pth file, or none")
    attn_impl: str = setting(
        "auto", RUNTIME, "deformable attention implementation", choices=("auto", "pytorch", "triton")
    )
    # Worked out, not flags: whether the backbone learns (--lr_backbone > 0), whether ImageNet
    # weights are loaded (not when a checkpoint replaces them), panoptic things and stuff.
    train_backbone: bool = derived(True)
    load_backbone_weights: bool = derived(True)
    panoptic_is_thing_map: dict[int, bool] | None = derived()

    def __post_init__(self) -> None:
        _check(
            self.hidden_dim % self.nheads == 0,
            f"--hidden_dim ({self.hidden_dim}) must be divisible by --nheads ({self.nheads})",
        )
        _check(self.num_feature_levels >= 1, f"--num_feature_levels must be >= 1, got {self.num_feature_levels}")
        _check(self.num_classes is None or self.num_classes >= 1, f"--num_classes must be >= 1, got {self.num_classes}")
        _check(
            self.frozen_weights is None or self.masks, "--frozen_weights trains only the mask head: it needs --masks"
        )
        ignored = [f for f in settings_of(type(self)) if f.metadata["only"] and self.model not in f.metadata["only"]
                   and not (self.dn and f.name in DN_SETTINGS)]  # fmt: skip
        ignored = [f for f in ignored if getattr(self, f.name) not in (None, _model_default(f, self.model))]
        if ignored:  # given, or from a checkpoint
            raise ConfigError(_ignored_message(ignored, self.model))
        if self.model == "dino":
            _check(not self.masks, "--masks is not supported with --model dino (no segmentation head)")
            _check(
                self.num_feature_levels >= 2,
                f"--num_feature_levels must be >= 2 for DINO, got {self.num_feature_levels}",
            )
        _check(self.dn_number >= 0, f"--dn_number must be >= 0, got {self.dn_number}")
        for name in ("dn_label_noise_ratio", "dn_box_noise_scale"):
            _check(0 <= getattr(self, name) <= 1, f"--{name} must be in [0, 1], got {getattr(self, name)}")
        _check(self.num_select >= 1, f"--num_select must be >= 1, got {self.num_select}")
        for name in ("mask_loss_coef", "dice_loss_coef"):
            _check(self.masks or getattr(self, name) == 1.0, f"--{name} weighs a mask loss: it needs --masks")
        _check(
            self.position_embedding not in ("learned", "v3") or self.position_embedding_scale == 2 * math.pi,
            f"--position_embedding_scale scales the sine encoding: --position_embedding {self.position_embedding} "
            "ignores it",
        )
        _check(
            not self.two_stage or self.with_box_refine,
            "--two_stage needs --with_box_refine: without it the official code fails at the first forward pass "
            "(its proposal head is the box refinement's last layer)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelConfig:
        """From ``main.get_args_parser()``'s flags; ``None`` presets take ``--model``'s values."""
        values, given = _read(cls, args), vars(args)
        lr_backbone = _read(TrainConfig, args)["lr_backbone"]
        values["train_backbone"] = lr_backbone > 0
        # every backbone weight comes from the checkpoint: no ImageNet download
        values["load_backbone_weights"] = not (
            given.get("resume") or given.get("frozen_weights") or given.get("finetune")
        )
        values["panoptic_is_thing_map"] = given.get("panoptic_is_thing_map")
        return cls(**values)

    @classmethod
    def preset(cls, model: str, **changes: Any) -> ModelConfig:
        """``--model``'s official architecture with ``changes`` (setting name -> value)."""
        return cls(**_fill_presets({"model": model, **changes}, cls))

    def architecture(self) -> dict[str, Any]:
        """The architecture settings, by name."""
        return {f.name: getattr(self, f.name) for f in settings_of(type(self), ARCHITECTURE)}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule and training recipe."""

    lr: float | None = setting(None, SCHEDULE, "learning rate of the transformer and heads")
    lr_backbone_names: list[str] | None = setting(None, RECIPE, "parameter names that take --lr_backbone")
    lr_backbone: float | None = setting(None, SCHEDULE, "learning rate of the backbone (0: frozen)")
    lr_linear_proj_names: list[str] | None = setting(
        None, RECIPE, "parameter names that take --lr_linear_proj_mult x --lr"
    )
    lr_linear_proj_mult: float = setting(0.1, SCHEDULE, "learning-rate factor of --lr_linear_proj_names")
    batch_size: int = setting(2, SCHEDULE, "images per process and step")
    weight_decay: float = setting(1e-4, SCHEDULE, "AdamW weight decay")
    epochs: int | None = setting(None, SCHEDULE, "epochs to train")
    lr_drop: int | None = setting(None, SCHEDULE, "epochs between drops of the learning rate by 10")
    lr_drop_epochs: list[int] | None = setting(
        None, SCHEDULE, "epochs at which the learning rate drops (instead of --lr_drop)"
    )
    clip_max_norm: float = setting(0.1, SCHEDULE, "gradient clipping max norm")
    grad_accum_steps: int = setting(1, SCHEDULE, "an optimizer step every N batches, as one N times larger batch")
    sgd: bool = setting(False, RECIPE, "SGD with momentum instead of AdamW")
    fused_optimizer: bool = setting(False, RECIPE, "fused AdamW/SGD kernel (faster, rounds differently)")
    ema: bool = setting(False, RECIPE, "keep an exponential moving average of the weights, evaluated beside them")
    ema_decay: float = setting(0.9997, RECIPE, "EMA decay")
    freeze_backbone: bool = setting(False, RECIPE, "train nothing in the backbone")
    freeze_encoder: bool = setting(False, RECIPE, "train nothing in the transformer encoder")
    amp: str = setting("none", RECIPE, "mixed precision", choices=("none", "bf16", "fp16"))
    channels_last: bool = setting(False, RECIPE, "convolutions in channels-last memory format (rounds differently)")
    fold_frozen_bn: bool = setting(
        False, RECIPE, "apply the frozen BatchNorm folded into the convolutions (rounds differently)"
    )
    seed: int = setting(42, RECIPE, "random seed")
    eval_every: int = setting(1, RECIPE, "evaluate every N epochs, and after the last")
    finetune: str = setting(
        "", RUNTIME, "start from a checkpoint's weights (path, URL, hub name); heads re-initialised if needed"
    )

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}")
        _check(self.grad_accum_steps >= 1, f"--grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        _check(self.eval_every >= 1, f"--eval_every must be >= 1, got {self.eval_every}")
        _check(
            self.lr_linear_proj_names is None or bool(self.lr_linear_proj_names) or self.lr_linear_proj_mult == 0.1,
            "--lr_linear_proj_mult applies to --lr_linear_proj_names, which are none (as for --model detr): "
            "give those names too, or drop it",
        )


@dataclass(frozen=True)
class DataConfig:
    """What to read and how to check it. ``datasets.build_dataset`` takes it; paths are strings
    (``None``: not given). ``rank`` / ``world_size``: this process's shard."""

    dataset_file: str = setting("coco", DATA, "data set format", choices=("coco", "coco_panoptic", "voc", "yolo"))
    coco_path: str | None = setting(None, DATA, "COCO 2017 layout: train2017/, val2017/, annotations/")
    coco_panoptic_path: str | None = setting(None, DATA, "COCO panoptic annotations folder")
    train_images: str | None = setting(None, DATA, "COCO-format training images anywhere (with --train_annotations)")
    train_annotations: str | None = setting(None, DATA, "COCO-format training annotation file")
    val_images: str | None = setting(None, DATA, "COCO-format validation images anywhere (with --val_annotations)")
    val_annotations: str | None = setting(None, DATA, "COCO-format validation annotation file")
    voc_path: str | None = setting(None, DATA, "PASCAL VOC: the VOCdevkit folder")
    voc_years: tuple[str, ...] | None = setting(
        None, DATA, "VOC years, e.g. 2007,2012 (default: every VOC<year> folder)"
    )
    yolo_path: str | None = setting(None, DATA, "YOLO format: the folder holding data.yaml (or the yaml file)")
    train_split: str | None = setting(None, DATA, "VOC image list (default trainval) / YOLO yaml key (train)")
    val_split: str | None = setting(None, DATA, "VOC image list (default val, or test) / YOLO yaml key (val)")
    remove_difficult: bool = setting(False, DATA, "VOC: drop difficult objects from training")
    cache_mode: bool = setting(False, DATA, "keep the encoded images of each process's shard in memory")
    check_images: str = setting("header", DATA, "start-up image check", choices=CHECK_IMAGES_LEVELS)
    max_bad_images: float = setting(0.001, DATA, "fraction of unreadable images skipped with a warning")
    train_scales: tuple[int, ...] = setting(OFFICIAL_TRAIN_SCALES, DATA, "shorter-side sizes for training")
    val_size: int = setting(800, EVALUATION, "shorter side for evaluation")
    max_size: int = setting(1333, EVALUATION, "longer-side cap")
    masks: bool = derived(False)
    num_classes: int | None = derived()
    rank: int = derived(0)
    world_size: int = derived(1)

    def __post_init__(self) -> None:
        _check(
            self.check_images in CHECK_IMAGES_LEVELS,
            f"--check_images must be one of {CHECK_IMAGES_LEVELS}, got {self.check_images!r}",
        )
        _check(
            0.0 <= self.max_bad_images <= 1.0,
            f"--max_bad_images is a fraction of the images in [0, 1], got {self.max_bad_images}",
        )
        _check(
            bool(self.train_scales) and all(int(s) > 0 for s in self.train_scales),
            f"--train_scales must be positive, got {list(self.train_scales)}",
        )
        _check(
            self.max_size > 0 and self.val_size > 0,
            f"--max_size and --val_size must be positive, got {self.max_size}, {self.val_size}",
        )
        _check(self.num_classes is None or self.num_classes >= 1, f"--num_classes must be >= 1, got {self.num_classes}")
        _check(0 <= self.rank < self.world_size, f"rank {self.rank} out of range for world size {self.world_size}")

    @classmethod
    def from_args(cls, args: argparse.Namespace, rank: int = 0, world_size: int = 1) -> DataConfig:
        """From ``main.get_args_parser()``'s flags (``num_classes`` ``None``: not checked yet)."""
        values = _read(cls, args)
        values["voc_years"] = parse_years(values["voc_years"])
        values["train_scales"] = tuple(int(s) for s in values["train_scales"])
        model = _read(ModelConfig, args)
        return cls(**values, masks=model["masks"], num_classes=model["num_classes"], rank=rank, world_size=world_size)

    def split_name(self, image_set: str, defaults: dict[str, str]) -> str:
        """The VOC list / YOLO yaml key of ``image_set``: ``train_split`` / ``val_split``, else ``defaults``."""
        if image_set not in ("train", "val"):
            raise ValueError(f"unknown image_set {image_set!r}, expected 'train' or 'val'")
        return (self.train_split if image_set == "train" else self.val_split) or defaults[image_set]

    def max_bad_count(self, num_images: int) -> int:
        """How many of ``num_images`` images may be unreadable before the run stops."""
        return math.floor(self.max_bad_images * num_images + 1e-9)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how this process runs: never stored in checkpoints."""

    output_dir: str = setting("", RUNTIME, "where to save; empty for no saving")
    overwrite_output_dir: bool = setting(
        False, RUNTIME, "start a new run in an --output_dir holding another run's checkpoints, removing them"
    )
    device: str | None = setting(None, RUNTIME, "default: cuda when available, else cpu")
    resume: str = setting("", RUNTIME, "checkpoint to resume (path or URL); 'auto': the newest in --output_dir")
    start_epoch: int = setting(0, RUNTIME, "first epoch (a resumed run starts after its checkpoint's)")
    eval: bool = setting(False, RUNTIME, "only evaluate")
    eval_optimize: str = setting(
        "fast",
        RUNTIME,
        "evaluation path: fast (BatchNorm folded), compile, or none",
        choices=("none", "fast", "compile"),
    )
    coco_eval_backend: str = setting(
        "pycocotools", RUNTIME, "COCO evaluation: pycocotools or faster-coco-eval", choices=("pycocotools", "faster")
    )
    keep_checkpoints: int = setting(2, RUNTIME, "rolling checkpoints kept: checkpoint.pth and N-1 older ones")
    tensorboard: bool = setting(False, RUNTIME, "write TensorBoard events to <output_dir>/tensorboard")
    num_workers: int = setting(2, RUNTIME, "data loading processes")
    print_freq: int = setting(10, RUNTIME, "log every N iterations")
    world_size: int = setting(1, RUNTIME, "number of distributed processes")
    dist_url: str = setting("env://", RUNTIME, "url used to set up distributed training")
    dist_timeout: int = setting(
        1800, RUNTIME, "seconds a rank waits for the others in a collective before the run stops (30 min: 8-GPU saves)"
    )

    def __post_init__(self) -> None:
        _check(self.keep_checkpoints >= 1, f"--keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        _check(self.dist_timeout >= 1, f"--dist_timeout must be >= 1 second, got {self.dist_timeout}")


PARTS: tuple[type, ...] = (ModelConfig, TrainConfig, DataConfig, RuntimeConfig)


@dataclass(frozen=True)
class RunConfig:
    """A whole run's settings, by part."""

    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    runtime: RuntimeConfig

    def __post_init__(self) -> None:
        _check(
            not (self.train.finetune and self.model.frozen_weights),
            "--finetune and --frozen_weights exclude each other",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """Check every setting of a namespace whose presets are filled (``resolve``)."""
        return cls(ModelConfig.from_args(args), TrainConfig(**_read(TrainConfig, args)),
                   DataConfig.from_args(args), RuntimeConfig(**_read(RuntimeConfig, args)))  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Derived from the declaration


def settings_of(part: type, *kinds: str) -> list[dataclasses.Field]:
    """The command-line settings of a part (of ``kinds`` only, when given)."""
    return [
        f for f in dataclasses.fields(part) if f.metadata.get("kind") and (not kinds or f.metadata["kind"] in kinds)
    ]


def all_settings(*kinds: str) -> dict[str, dataclasses.Field]:
    """Every setting by name (of ``kinds`` only, when given)."""
    return {f.name: f for part in PARTS for f in settings_of(part, *kinds)}


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _argument(f: dataclasses.Field, hints: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """argparse's ``add_argument`` call for a setting."""
    meta, default = f.metadata, default_of(f)
    help_text = meta["help"]
    if f.name in PRESETS["detr"]:
        help_text += " (default: " + ", ".join(f"{PRESETS[m][f.name]} for {m}" for m in MODELS) + ")"
    if meta["flag"]:  # --no_<name>: gives False
        return [meta["flag"]], {"dest": f.name, "action": "store_false", "help": help_text}
    kind = hints[f.name]
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in args if a is not type(None))
    if kind is bool:
        return [f"--{f.name}"], {"action": "store_true", "help": help_text}
    kw: dict[str, Any] = {"default": default, "help": help_text}
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        kw["nargs"], kind = "+", typing.get_args(kind)[0]
    kw["type"] = str if kind not in (int, float) else kind
    if meta["choices"]:
        kw["choices"] = meta["choices"]
    return [f"--{f.name}"], kw


def add_arguments(parser: argparse.ArgumentParser, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """Add every setting to ``parser``, one argument group per part."""
    for part in PARTS:
        group = parser.add_argument_group(part.__name__.removesuffix("Config").lower())
        hints = typing.get_type_hints(part)
        for f in settings_of(part):
            names, kw = _argument(f, hints)
            if suppress_defaults:
                kw["default"] = argparse.SUPPRESS
            group.add_argument(*names, **kw)
    return parser


def get_args_parser() -> argparse.ArgumentParser:
    """The official parser (``add_help=False``, meant as a parent): every flag of ``PARTS``.
    Preset settings default to ``None``; ``resolve`` fills them from ``--model``."""
    return add_arguments(argparse.ArgumentParser("Set transformer detector", add_help=False))


def default_args(**values: Any) -> argparse.Namespace:
    """The parser's defaults with ``values`` (setting -> value) in their place, as if given on the
    command line; unknown names are an error."""
    args = get_args_parser().parse_args([])
    unknown = sorted(set(values) - set(vars(args)))
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)}")
    vars(args).update(values)
    return args


def given_settings(argv: Sequence[str]) -> set[str]:
    """The settings that ``argv`` gives (whatever their value)."""
    parser = add_arguments(argparse.ArgumentParser(add_help=False), suppress_defaults=True)
    known, _ = parser.parse_known_args(list(argv))
    return set(vars(known))


def differing_settings(args: argparse.Namespace) -> set[str]:
    """For a namespace not parsed from a command line: the settings whose value is not the default."""
    return {name for name, f in all_settings().items() if name in vars(args) and vars(args)[name] != default_of(f)}


def _fill_presets(values: dict[str, Any], part: type | None = None) -> dict[str, Any]:
    """``values`` with each ``None`` preset (of ``part``, or all) set from ``values["model"]``."""
    names = {f.name for f in settings_of(part)} if part else set(PRESETS["detr"])
    preset = PRESETS[values.get("model", "detr")]
    return {**values, **{k: v for k, v in preset.items() if k in names and values.get(k) is None}}


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of ``args`` with the ``--model`` presets filled in and the device chosen, every
    setting checked (``SystemExit`` naming the flag otherwise)."""
    if args.model not in PRESETS:
        raise SystemExit(f"error: --model: unknown '{args.model}', choose from {list(MODELS)}")
    values = _fill_presets(vars(args))
    if values["device"] is None:
        import torch

        values["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = argparse.Namespace(**values)
    try:
        RunConfig.from_args(resolved)  # checks every value
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from e
    return resolved


def saved(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a checkpoint stores: all but the runtime ones, as plain values."""
    plain = (int, float, str, bool, list, tuple, type(None))
    out = {}
    for name, f in all_settings().items():
        value = vars(args).get(name)
        if f.metadata["kind"] != RUNTIME and isinstance(value, plain):
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def inherit(args: argparse.Namespace, given: Iterable[str], stored: dict[str, Any], purpose: str,
            official: bool = False) -> tuple[list[str], list[str]]:  # fmt: skip
    """Set in ``args`` the settings not ``given`` on the command line from a checkpoint's
    ``stored`` ones. ``purpose``: ``"resume"`` takes every stored setting (of an official
    checkpoint, its architecture), ``"eval"`` the architecture and evaluation sizes,
    ``"finetune"`` the architecture but ``num_classes``, ``"frozen"`` (``--frozen_weights``, a box
    model under a mask head) the architecture but ``masks``. A stored ``None`` for a setting whose
    default is not ``None`` (older checkpoints) means the default. Returns ``(notes, refused)``:
    notes for the log, and the architecture changes a resumed run (or a frozen one) refuses."""
    given = set(given)
    kinds = {
        "resume": KINDS,
        "eval": (ARCHITECTURE, EVALUATION),
        "finetune": (ARCHITECTURE,),
        "frozen": (ARCHITECTURE,),
    }[purpose]
    skipped = {"finetune": "num_classes", "frozen": "masks"}.get(purpose)
    if official:  # the official code's args: only its architecture flags mean the same here
        kinds = (ARCHITECTURE,)
    wanted = all_settings(*tuple(k for k in kinds if k != RUNTIME))
    notes, refused = [], []
    for name, f in wanted.items():
        if name not in stored or name == skipped:
            continue
        value, kind = stored[name], f.metadata["kind"]
        if value is None and default_of(f) is not None and name not in PRESETS["detr"]:
            continue
        current = vars(args).get(name)
        if name not in given:
            setattr(args, name, value)
        elif _plain(current) != _plain(value):
            if purpose in ("resume", "frozen") and kind == ARCHITECTURE:
                refused.append(f"--{name} {current} (the checkpoint has {value})")
            elif purpose == "resume":
                epoch_on = " from the resumed epoch on" if kind == SCHEDULE else ""
                notes.append(f"--{name} {current} replaces the checkpoint's {value}{epoch_on}")
            elif kind == ARCHITECTURE:
                notes.append(f"--{name} {current} given: used instead of the checkpoint's {value}")
    return notes, refused


def changed_schedule(args: argparse.Namespace, given: Iterable[str], stored: dict[str, Any]) -> set[str]:
    """The schedule settings given with another value than a resumed checkpoint's."""
    names = all_settings(SCHEDULE)
    return {k for k in set(given) & set(names) if k in stored and _plain(stored[k]) != _plain(vars(args)[k])}


def parse_years(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"2007,2012"`` (or a list of such strings) -> ``("2007", "2012")``; ``None`` / empty -> ``None``."""
    if value is None:
        return None
    parts = [value] if isinstance(value, str) else list(value)
    years = tuple(y.strip() for part in parts for y in str(part).split(",") if y.strip())
    return years or None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _read(part: type, args: argparse.Namespace) -> dict[str, Any]:
    """A part's settings from a namespace. A setting the namespace lacks (one made by the official
    code's parser, which predates it) takes its declared default; ``None`` presets take ``--model``'s."""
    values = vars(args)
    out = {f.name: values.get(f.name, default_of(f)) for f in settings_of(part)}
    preset = PRESETS[values.get("model", "detr")]
    return {k: (preset[k] if v is None and k in preset else v) for k, v in out.items()}


class ConfigError(ValueError):
    """A setting's value, or a combination of settings, that cannot work; the message names the flag."""


def _model_default(f: dataclasses.Field, model: str) -> Any:
    """The value of setting ``f`` when ``--model model`` is not given it: its preset, or its default."""
    return PRESETS[model].get(f.name, default_of(f))


def _ignored_message(ignored: list[dataclasses.Field], model: str) -> str:
    """``--x is a Deformable DETR / DINO option, which --model detr ignores: ...`` for one flag or several."""
    names = ", ".join(f"--{f.name}" for f in ignored)
    owners = [m for m in MODELS if all(m in f.metadata["only"] for f in ignored)] or list(ignored[0].metadata["only"])
    what = f"{' / '.join(MODEL_NAMES[m] for m in owners)} option"
    dn = ", or --dn with --model deformable_detr" if any(f.name in DN_SETTINGS for f in ignored) else ""
    if len(ignored) == 1:
        return f"{names} is a {what}, which --model {model} ignores: drop it or use --model {owners[0]}{dn}"
    return f"{names} are {what}s, which --model {model} ignores: drop them or use --model {owners[0]}{dn}"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
