"""The typed schema of a recipe file: four sections, ``model``, ``data``, ``train`` and ``eval``.

Each section is a dataclass; every field carries its documentation (``doc``) and, where it
applies, its bounds (``ge``, ``gt``, ``le``) in the field's metadata. :func:`from_dict` checks a
plain mapping (parsed YAML) against these classes and stops at the first problem with a
:class:`~kdetect.errors.RecipeError` whose one-line message names the dotted key, what was
expected and what was received, and for a misspelt key the closest valid one.

Only this package turns a recipe into keyword arguments for the model, the data pipeline and the
optimizer; the rest of kdetect never sees these classes.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from kdetect.backbone_names import BACKBONES, FREEZE_STAGES
from kdetect.errors import RecipeError, did_you_mean

FORMATS = ("shapes", "voc", "coco", "csv", "yolo", "labelstudio", "tfrecord")


def _f(default: Any = dataclasses.MISSING, doc: str = "", **meta: Any) -> Any:
    """A dataclass field with documentation and validation metadata.

    ``default`` may be a zero-argument callable (``list``/a dataclass) for mutable defaults.
    Recognised metadata: ``ge``/``gt``/``le``/``lt`` numeric bounds, ``path=True`` for a file
    or folder that must exist (checked by the loader), ``positive_items=True`` and
    ``min_items=N`` for lists. Numbers must be finite (``.inf`` and ``.nan`` are refused).
    """
    metadata = {"doc": doc, **meta}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------


@dataclass
class RPNConfig:
    """Region proposal network (the model's ``rpn_*`` arguments)."""

    pre_nms_top_n_train: int = _f(2000, "proposals kept per image before NMS (training)", gt=0)
    pre_nms_top_n_test: int = _f(1000, "proposals kept per image before NMS (inference)", gt=0)
    post_nms_top_n_train: int = _f(2000, "proposals kept per image after NMS (training)", gt=0)
    post_nms_top_n_test: int = _f(1000, "proposals kept per image after NMS (inference)", gt=0)
    nms_thresh: float = _f(0.7, "IoU threshold of the proposal NMS", gt=0, le=1)
    fg_iou_thresh: float = _f(0.7, "anchors with IoU >= this are positives", ge=0, le=1)
    bg_iou_thresh: float = _f(0.3, "anchors with IoU < this are negatives", ge=0, le=1)
    batch_size_per_image: int = _f(256, "anchors sampled per image for the RPN loss", gt=0)
    positive_fraction: float = _f(0.5, "largest share of positives in that sample", gt=0, le=1)
    score_thresh: float = _f(
        0.0, "proposals with a lower objectness probability are dropped", ge=0, le=1
    )
    conv_depth: int = _f(1, "3x3 conv layers of the RPN head (torchvision's v2 detector: 2)", gt=0)


@dataclass
class BoxConfig:
    """Second stage, the RoI box head (the model's ``box_*`` arguments)."""

    score_thresh: float = _f(0.05, "detections scoring below this are dropped", ge=0, le=1)
    nms_thresh: float = _f(0.5, "IoU threshold of the per-class NMS", gt=0, le=1)
    detections_per_img: int = _f(100, "most detections returned per image", gt=0)
    fg_iou_thresh: float = _f(0.5, "proposals with IoU >= this are positives", ge=0, le=1)
    bg_iou_thresh: float = _f(0.5, "proposals with IoU < this are negatives", ge=0, le=1)
    batch_size_per_image: int = _f(512, "proposals sampled per image for the head loss", gt=0)
    positive_fraction: float = _f(0.25, "largest share of positives in that sample", gt=0, le=1)
    head_units: int = _f(1024, "width of the fully connected layers of the box head", gt=0)
    head_type: Literal["mlp", "conv_fc"] = _f(
        "mlp",
        "`mlp`: two fully connected layers (FPN's head); `conv_fc`: four 3x3 conv + batch norm "
        "layers and one fully connected layer (torchvision's v2 detector)",
    )
    roi_pool_size: int = _f(7, "RoIAlign output size (pixels per side)", gt=0)
    sampling_ratio: int = _f(2, "RoIAlign sampling points per bin side", gt=0)
    reg_weights: list[float] = _f(
        lambda: [10.0, 10.0, 5.0, 5.0], "box coder weights (wx, wy, ww, wh)", positive_items=True
    )


@dataclass
class ModelConfig:
    """The detector. The number of classes comes from the data section."""

    backbone: Literal[BACKBONES] = _f(
        "resnet50",
        "feature extractor; `torchvision_resnet50` and `torchvision_mobilenet_v3_large` are "
        "torchvision's networks (the backbones of imported torchvision checkpoints; the "
        "MobileNetV3 needs fpn); `tiny` is a small CNN for tests and demos",
    )
    fpn: bool = _f(True, "use a feature pyramid (false: single C4 feature map, like Luminoth)")
    backbone_weights: str | None = _f(
        None, "`imagenet` (downloaded by Keras), a local weights file, or null for random"
    )
    freeze: Literal[FREEZE_STAGES] | None = _f(
        None, "freeze the backbone up to and including this stage; null trains everything"
    )
    anchor_sizes: list[list[float]] | None = _f(
        None,
        "anchor sizes in pixels, one list per RPN level ([[32], [64], [128], [256], [512]] with "
        "FPN, [[32, 64, 128, 256, 512]] without); null uses that default",
    )
    aspect_ratios: list[float] = _f(
        lambda: [0.5, 1.0, 2.0],
        "anchor aspect ratios (height / width)",
        positive_items=True,
        min_items=1,
    )
    frozen_batch_norm: bool | None = _f(
        None, "keep backbone batch-norm statistics fixed; null: true when backbone_weights is set"
    )
    fpn_channels: int = _f(256, "channels of the feature pyramid levels", gt=0)
    fpn_batch_norm: bool = _f(
        False, "batch norm after the pyramid's convs instead of biases (torchvision's v2 detector)"
    )
    batch_norm_epsilon: float | None = _f(
        None, "epsilon of the backbone's batch norm; null keeps the backbone's own", ge=0
    )
    roi_align_aligned: bool = _f(
        True, "half-pixel RoIAlign (Detectron2's aligned=True); torchvision's detectors use false"
    )
    image_size: list[int] = _f(
        lambda: [512, 512],
        "[height, width] of the frame the network trains at (and `fit` predicts at), multiples "
        "of 32; training images are resized by resize_mode's rule and padded to it",
        length=2,
        positive_items=True,
    )
    resize_mode: Literal["fit", "min_max"] = _f(
        "fit",
        "the model's one resize rule, for training, evaluate, predict, serve and export: `fit` "
        "into image_size, or `min_max` as torchvision does (short side to min_size unless the "
        "long side passes max_size; predict pads each image to a multiple of 32, training "
        "batches to image_size)",
    )
    min_size: int = _f(800, "short side of an image resized in `min_max` mode", gt=0)
    max_size: int = _f(1333, "longest long side of an image resized in `min_max` mode", gt=0)
    rpn: RPNConfig = _f(RPNConfig, "region proposal network settings")
    box: BoxConfig = _f(BoxConfig, "RoI box head settings")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Training-time augmentation (box aware; never applied to validation data)."""

    enabled: bool = _f(True, "augment the training images; false feeds them resized only")
    horizontal_flip: float = _f(0.5, "probability of a left-right flip", ge=0, le=1)
    scale_range: list[float] = _f(
        lambda: [0.8, 1.25],
        "random scale [low, high] of the fitted image; above 1 a window is cropped, below 1 "
        "there is more padding ([1, 1] disables)",
        length=2,
        positive_items=True,
    )
    brightness: float = _f(0.0, "brightness jitter, a fraction of 255 (0 disables)", ge=0, le=1)
    contrast: float = _f(0.0, "contrast factor range 1 +- value (0 disables)", ge=0, le=1)
    saturation: float = _f(0.0, "saturation factor range 1 +- value (0 disables)", ge=0, le=1)
    hue: float = _f(0.0, "hue jitter, a fraction of a turn (0 disables)", ge=0, le=0.5)
    min_box_size: float = _f(
        1.0, "boxes narrower or lower than this (pixels) after cropping are dropped", ge=0
    )


@dataclass
class ShapesConfig:
    """The built-in synthetic dataset (``data.format: shapes``)."""

    num_train: int = _f(256, "number of synthetic training images", gt=0)
    num_val: int = _f(32, "number of synthetic validation images", ge=0)
    seed: int = _f(0, "random seed of the generator (the validation set uses seed + 1)")


@dataclass
class DataConfig:
    """Where the images and boxes come from and how they are fed."""

    format: Literal["shapes", "voc", "coco", "csv", "yolo", "labelstudio", "tfrecord"] = _f(
        "shapes",
        "dataset layout: shapes (built in), voc, coco, csv, yolo (data.yaml), labelstudio (JSON "
        "export) or tfrecord",
    )
    root: str | None = _f(
        None,
        "dataset folder (VOCdevkit year folder, COCO root, CSV folder or TFRecord folder); "
        "not used by shapes",
        path=True,
    )
    train_split: str = _f("train", "split used for training")
    val_split: str | None = _f("val", "split used for validation; null disables validation")
    classes: list[str] | None = _f(
        None,
        "class names to train on, in this order (label id = position); boxes of other classes "
        "are dropped; null keeps every class of the dataset",
    )
    batch_size: int = _f(2, "images per training step (global, over all devices)", gt=0)
    max_boxes: int = _f(100, "boxes per image after padding; extra boxes are dropped", gt=0)
    shuffle: bool = _f(True, "shuffle the training images every epoch")
    on_invalid_box: Literal["error", "clip", "drop"] = _f(
        "drop", "what the reader does with a zero-area or out-of-image box: error, clip or drop"
    )
    augment: AugmentConfig = _f(AugmentConfig, "training-time augmentation")
    shapes: ShapesConfig = _f(ShapesConfig, "synthetic shapes options")


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    """Optimizer and gradient clipping."""

    name: Literal["sgd", "adam", "adamw"] = _f("sgd", "sgd (with momentum), adam or adamw")
    lr: float = _f(0.02, "base learning rate (peak of the schedule)", gt=0)
    momentum: float = _f(0.9, "SGD momentum", ge=0, lt=1)
    nesterov: bool = _f(False, "Nesterov momentum (SGD)")
    weight_decay: float = _f(
        1e-4, "decoupled weight decay (SGD, AdamW); Adam ignores it unless set", ge=0
    )
    beta_1: float = _f(0.9, "Adam/AdamW first-moment decay", ge=0, lt=1)
    beta_2: float = _f(0.999, "Adam/AdamW second-moment decay", ge=0, lt=1)
    epsilon: float = _f(1e-7, "Adam/AdamW epsilon", gt=0)
    clipnorm: float | None = _f(
        None, "clip each gradient tensor to this L2 norm; null disables", gt=0
    )
    global_clipnorm: float | None = _f(
        None, "clip all gradients together to this global L2 norm; null disables", gt=0
    )


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, applied per step."""

    name: Literal["constant", "step", "cosine"] = _f(
        "step", "constant, step (decay by gamma at milestones) or cosine (to min_lr_factor)"
    )
    warmup_steps: int = _f(0, "linear warm-up steps from warmup_factor * lr to lr", ge=0)
    warmup_factor: float = _f(0.001, "learning-rate factor at the first warm-up step", gt=0, le=1)
    milestones: list[int] = _f(
        lambda: [8, 11],
        "step schedule: epochs after which lr is multiplied by gamma",
        positive_items=True,
    )
    gamma: float = _f(0.1, "step schedule: decay factor", gt=0, le=1)
    min_lr_factor: float = _f(0.0, "cosine schedule: final lr as a fraction of lr", ge=0, le=1)


@dataclass
class CheckpointConfig:
    """What is saved under ``RUN_DIR/checkpoints/`` during training."""

    every_epochs: int | None = _f(1, "save a checkpoint every N epochs; null disables", gt=0)
    every_steps: int | None = _f(None, "also save every N training steps; null disables", gt=0)
    keep: int = _f(3, "periodic checkpoints kept (the oldest are deleted)", gt=0)
    best: Literal["val_loss", "loss", "map", "none"] = _f(
        "val_loss",
        "keep checkpoints/best.keras by lowest val_loss, lowest training loss or highest "
        "validation mAP; none disables",
    )


@dataclass
class TrainConfig:
    """The ``fit()`` loop."""

    epochs: int = _f(12, "number of epochs", gt=0)
    steps_per_epoch: int | None = _f(
        None, "training steps per epoch; null makes one pass over the training set"
    )
    validation_steps: int | None = _f(
        None, "validation steps per epoch; null makes one pass over the validation set"
    )
    seed: int | None = _f(0, "random seed (weights initialisation, shuffling, augmentation)")
    optimizer: OptimizerConfig = _f(OptimizerConfig, "optimizer settings")
    schedule: ScheduleConfig = _f(ScheduleConfig, "learning-rate schedule")
    mixed_precision: Literal["mixed_float16", "mixed_bfloat16"] | None = _f(
        None, "Keras dtype policy for mixed precision; null trains in float32"
    )
    jit_compile: bool = _f(False, "compile the train step with XLA")
    distribute: Literal["none", "mirrored", "multi_worker", "tpu"] = _f(
        "none",
        "tf.distribute strategy: none (one device), mirrored (all local GPUs), multi_worker "
        "(cluster from TF_CONFIG), tpu",
    )
    init_from: str | None = _f(
        None,
        "start from the weights of a run directory or .keras/.kdet file; heads whose shapes "
        "differ (other class count) are re-initialised",
        path=True,
    )
    checkpoint: CheckpointConfig = _f(CheckpointConfig, "checkpoint settings")
    tensorboard: bool = _f(True, "write TensorBoard logs to RUN_DIR/logs")


# --------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """Evaluation during training and the defaults of ``kdetect evaluate``."""

    metric: Literal["voc07", "voc", "coco"] = _f(
        "voc", "voc07 (11-point VOC2007 AP), voc (area AP, VOC2010+) or coco (pycocotools)"
    )
    every: int = _f(0, "compute validation mAP every N epochs during training; 0 disables", ge=0)
    split: str | None = _f(None, "split evaluated by `kdetect evaluate`; null uses data.val_split")
    max_images: int | None = _f(
        None, "evaluate at most this many validation images during training; null: all", gt=0
    )
    samples: int = _f(
        8, "validation images saved to RUN_DIR/samples and drawn in TensorBoard", ge=0
    )


@dataclass
class Recipe:
    """A whole recipe file."""

    name: str | None = _f(None, "run name; null uses the recipe file's name")
    model: ModelConfig = _f(ModelConfig, "the detector")
    data: DataConfig = _f(DataConfig, "the dataset and input pipeline")
    train: TrainConfig = _f(TrainConfig, "the training loop")
    eval: EvalConfig = _f(EvalConfig, "evaluation")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-ready)."""
        return to_dict(self)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

_TYPE_WORDS = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    """Human wording of a type annotation, for messages and docs."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        parts = [_describe(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_plural(args[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    if typing.get_origin(tp) in (list, tuple):
        return f"lists of {_plural(typing.get_args(tp)[0])}"
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, "values")


def _check_value(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    """Validate and normalise one value against its annotation; return the clean value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None:
            if type(None) in args:
                return None
            raise RecipeError(f"{key}: expected {_describe(tp)}, got null")
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:
            try:
                return _check_value(key, value, option, meta)
            except RecipeError as exc:
                errors.append(exc)
        if len(inner) == 1:
            raise errors[0]
        raise RecipeError(f"{key}: expected {_describe(tp)}, got {_show(value)}")
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        choices = ", ".join(str(a) for a in args)
        hint = did_you_mean(value, [str(a) for a in args]) if isinstance(value, str) else ""
        raise RecipeError(f"{key}: expected one of {choices}, got {_show(value)}{hint}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping, got {_show(value)}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key}: expected {_describe(tp)}, got {_show(value)}")
        length = meta.get("length")
        if length is not None and len(value) != length:
            raise RecipeError(f"{key}: expected {length} values, got {len(value)}")
        if len(value) < meta.get("min_items", 0):
            raise RecipeError(
                f"{key}: needs at least {meta['min_items']} value(s), got {len(value)}"
            )
        items = [_check_value(f"{key}[{i}]", v, args[0], {}) for i, v in enumerate(value)]
        numbers = [v for v in items if isinstance(v, (int, float))]
        if meta.get("positive_items") and any(v <= 0 for v in numbers):
            raise RecipeError(f"{key}: every value must be > 0, got {list(value)}")
        return items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{key}: expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _check_bounds(key, value, meta)
        if isinstance(value, float) and value.is_integer():
            return _check_bounds(key, int(value), meta)
        raise RecipeError(f"{key}: expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _check_bounds(key, float(value), meta)
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            # PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string.
            return _check_bounds(key, float(value), meta)
        raise RecipeError(f"{key}: expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise RecipeError(f"{key}: expected a string, got {_show(value)}")
    raise TypeError(f"{key}: unsupported annotation {tp!r}")  # a bug in this schema


def _check_bounds(key: str, value: float, meta: dict[str, Any]) -> float:
    if not math.isfinite(value):
        raise RecipeError(f"{key}: expected a finite number, got {value}")
    for name, ok, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        bound = meta.get(name)
        if bound is not None and not ok(value, bound):
            raise RecipeError(f"{key}: must be {word} {bound}, got {_show(value)}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating every key and value.

    Raises:
        RecipeError: on the first unknown key (with the closest valid key), wrong type or bad
            value; the message names the dotted key.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{prefix or 'recipe'}: expected a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for key in data:
        if key not in fields:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            valid = ", ".join(fields)
            raise RecipeError(f"{dotted}: unknown key{hint}; valid keys: {valid}")
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _check_value(dotted, data[name], hints[name], dict(f.metadata))
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = from_dict(hints[name], {}, prefix=dotted)
    return cls(**kwargs)


def check_field(cls: type, name: str, value: Any, key: str) -> Any:
    """``value`` checked as field ``name`` of ``cls`` would be, errors naming ``key``."""
    meta = {f.name: dict(f.metadata) for f in dataclasses.fields(cls)}[name]
    return _check_value(key, value, _hints(cls)[name], meta)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict/list values (YAML-ready)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def iter_keys(cls: type = Recipe, prefix: str = ""):
    """Yield ``(dotted_key, type_text, default, doc)`` for every leaf key of the schema.

    Used by ``docs/recipes.md`` (and its test) so documentation cannot fall behind the schema.
    """
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_keys(tp, dotted)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()
        yield dotted, _describe(tp), default, f.metadata.get("doc", "")


def path_fields(cls: type = Recipe, prefix: str = ""):
    """Yield the dotted keys whose values name files or folders that must exist."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            yield from path_fields(hints[f.name], dotted)
        elif f.metadata.get("path"):
            yield dotted
