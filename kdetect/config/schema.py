"""The typed schema of a recipe file: four sections, ``model``, ``data``, ``train`` and ``eval``.

Each section is a dataclass; every field carries its documentation (``doc``) and, where it
applies, its bounds (``ge``, ``gt``, ``le``) in the field's metadata. :func:`from_dict` checks a
plain mapping (parsed YAML) against these classes and stops at the first problem with a
:class:`~kdetect.plumbing.errors.RecipeError` whose one-line message names the dotted key, what was
expected and what was received, and for a misspelt key the closest valid one (the checking
itself is :mod:`kdetect.config.typecheck`).

Only this package turns a recipe into keyword arguments for the model, the data pipeline and the
optimizer; the rest of kdetect never sees these classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from kdetect.backbones.names import BACKBONES, FREEZE_STAGES
from kdetect.config.typecheck import describe, hints, to_dict
from kdetect.models import RESIZE_MODES
from kdetect.models.registry import DEFAULT_TYPE, MODEL_TYPES

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
    """The detector. The number of classes comes from the data section.

    ``type`` picks the detector (:mod:`kdetect.models.registry`). The backbone, its weights and
    freezing, ``fpn_channels``, ``anchor_sizes`` and the input transform's keys are shared by
    every type whose class takes them; ``fpn``, ``aspect_ratios``, ``roi_align_aligned``,
    ``fpn_batch_norm``, ``rpn`` and ``box`` are Faster R-CNN's; the settings of another type
    are its class's constructor arguments, under ``options``.
    """

    type: Literal[tuple(MODEL_TYPES)] = _f(
        DEFAULT_TYPE,
        "the detector: "
        + "; ".join(f"`{entry.name}`: {entry.summary}" for entry in MODEL_TYPES.values()),
    )
    options: dict[str, Any] = _f(
        dict,
        "settings of a model.type other than faster_rcnn: its class's constructor arguments "
        "(docs/models.md lists each type's, with their defaults)",
    )
    backbone: Literal[BACKBONES] | None = _f(
        None,
        "feature extractor; null: the model type's own (faster_rcnn: resnet50); the "
        "`torchvision_*` ones are torchvision's networks (the backbones of imported torchvision "
        "checkpoints; `torchvision_mobilenet_v3_large` needs fpn; the ssd ones are those types' "
        "own); `tiny` is a small CNN for tests and demos",
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
    resize_mode: Literal[RESIZE_MODES] = _f(
        "fit",
        "the model's one resize rule, for training, evaluate, predict, serve and export: `fit` "
        "into image_size; `min_max` as torchvision does (short side to min_size unless the "
        "long side passes max_size; predict pads each image to a multiple of 32, training "
        "batches to image_size); `fixed`: stretched to image_size, no padding (SSD's 300x300)",
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
def iter_keys(cls: type = Recipe, prefix: str = ""):
    """Yield ``(dotted_key, type_text, default, doc)`` for every leaf key of the schema.

    Used by ``docs/recipes.md`` (and its test) so documentation cannot fall behind the schema.
    """
    annotations = hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        tp = annotations[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_keys(tp, dotted)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()
        yield dotted, describe(tp), default, f.metadata.get("doc", "")


def path_fields(cls: type = Recipe, prefix: str = ""):
    """Yield the dotted keys whose values name files or folders that must exist."""
    annotations = hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(annotations[f.name]):
            yield from path_fields(annotations[f.name], dotted)
        elif f.metadata.get("path"):
            yield dotted
