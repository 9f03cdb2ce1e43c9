"""Turn recipe sections into the objects ``fit()`` needs: datasets, the model, the optimizer.

This is the one place where recipe values become keyword arguments; the model and the pipeline
never see a recipe.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdetect.data.records import Annotations
from kdetect.errors import DataError, RecipeError, did_you_mean
from kdetect.recipes.schema import DataConfig, ModelConfig, Recipe, TrainConfig


@dataclass
class Datasets:
    """What :func:`build_datasets` returns."""

    classes: list[str]
    train_from: Callable[[int], Any]  # start batch -> the endless training tf.data.Dataset
    val: Any | None  # tf.data.Dataset
    train_annotations: Annotations | None  # None for TFRecords
    val_annotations: Annotations | None
    train_size: int  # number of training images
    train_batches: int  # batches of one pass over the training images


def select_classes(
    annotations: Annotations, classes: list[str], strict: bool = False
) -> Annotations:
    """Keep the boxes of ``classes`` only, relabelled to their index in that list.

    With ``strict``, a requested class the dataset does not have is an error (a typo).
    """
    if list(annotations.classes) == list(classes):
        return annotations
    if strict:
        for name in classes:
            if name not in annotations.classes:
                raise RecipeError(
                    f"data.classes: {name!r} is not a class of the dataset"
                    f"{did_you_mean(name, annotations.classes)}; it has: "
                    + ", ".join(annotations.classes)
                )
    index = {name: i for i, name in enumerate(classes)}
    records = []
    for record in annotations.records:
        names = [annotations.classes[label] for label in record.labels]
        keep = np.array([name in index for name in names], dtype=bool)
        records.append(
            dataclasses.replace(
                record,
                boxes=record.boxes[keep],
                labels=np.array([index[n] for n in names if n in index], dtype=np.int32),
                difficult=record.difficult[keep],
            )
        )
    return Annotations(list(classes), records)


def read_split(
    recipe: Recipe, split: str, classes: list[str] | None, strict: bool = False
) -> Annotations | str:
    """One split of the recipe's data as :class:`Annotations` (or the TFRecord folder for
    ``tfrecord``); synthetic shapes are drawn at the model's frame.

    ``classes`` selects and orders the classes (see :func:`select_classes`); ``None`` keeps
    the dataset's own list.
    """
    data = recipe.data
    if data.format == "shapes":
        from kdetect.data.shapes import make_shapes

        is_val = split == data.val_split and split != data.train_split
        count = data.shapes.num_val if is_val else data.shapes.num_train
        seed = data.shapes.seed + (1 if is_val else 0)
        shapes = make_shapes(count, image_size=tuple(recipe.model.image_size), seed=seed)
        return select_classes(shapes, classes, strict) if classes else shapes
    if data.format == "tfrecord":
        root = Path(data.root)
        if not list(root.glob(f"{split}*.tfrecord*")) and not list(root.glob(f"{split}/*")):
            raise RecipeError(f"data.root: no TFRecords of split {split!r} in {root}")
        return str(root)
    from kdetect.data.readers import read_annotations

    annotations = read_annotations(
        data.format, data.root, split, classes=None, on_invalid_box=data.on_invalid_box
    )
    return select_classes(annotations, classes, strict) if classes else annotations


def tfrecord_classes(data: DataConfig) -> list[str]:
    """The class list written next to TFRecords by ``kdetect dataset transform``."""
    path = Path(data.root) / "classes.json"
    if not path.is_file():
        raise RecipeError(f"data.root: {path} not found (written by `kdetect dataset transform`)")
    try:
        names = json.loads(path.read_text())
    except ValueError as exc:
        raise RecipeError(f"data.root: {path} is not valid JSON ({exc})") from None
    return list(names["classes"] if isinstance(names, dict) else names)


def build_datasets(recipe: Recipe, seed: int | None = None) -> Datasets:
    """The training and validation ``tf.data`` pipelines of a recipe, with the class list; the
    images are resized by the model's input transform (:func:`image_transform`).

    The training data is an endless stream of passes (``make_dataset(repeat=True)``):
    ``train_from(g)`` starts it at batch ``g``, the same batch, in the same order and with the
    same augmentation, that an uninterrupted run reads as its ``g``-th (with a fixed ``seed``).

    Every image of both splits is verified first (:func:`~kdetect.data.images.verify_images`),
    so a truncated or corrupt file stops here, all of them named, not in the middle of an epoch.
    """
    # Deferred: the pipeline imports TensorFlow, which checking a recipe does not need.
    from kdetect.data.images import verify_images
    from kdetect.data.pipeline import check_batch_fits, count_examples, make_dataset

    data = recipe.data
    train_source, val_source, classes = _read_sources(recipe)
    verify_images(
        [
            record.filename
            for source in (train_source, val_source)
            if isinstance(source, Annotations)
            for record in source.records
            if record.image is None
        ]
    )
    common = {
        "image_size": image_transform(recipe.model),
        "batch_size": data.batch_size,
        "max_boxes": data.max_boxes,
    }

    def split_option(split):  # TFRecords hold every split; the other sources are one split
        return {"split": split} if data.format == "tfrecord" else {}

    def train_from(start_batch: int):
        return make_dataset(
            train_source,
            **split_option(data.train_split),
            **common,
            augment=_augment_options(data),
            shuffle=data.shuffle,
            training=True,
            seed=seed,
            repeat=True,
            start_batch=start_batch,
        )

    train_size = count_examples(train_source, **split_option(data.train_split))
    check_batch_fits(train_size, data.batch_size)
    val_ds = None
    if val_source is not None:
        val_ds = make_dataset(
            val_source, **split_option(data.val_split), **common, augment=False, shuffle=False,
            training=False,
        )  # fmt: skip
    return Datasets(
        classes=classes,
        train_from=train_from,
        val=val_ds,
        train_annotations=train_source if isinstance(train_source, Annotations) else None,
        val_annotations=val_source if isinstance(val_source, Annotations) else None,
        train_size=train_size,
        train_batches=train_size // data.batch_size,
    )


def _read_sources(recipe: Recipe) -> tuple[Any, Any, list[str] | None]:
    """(train source, validation source or None, class list) of a recipe's data section."""
    data = recipe.data
    classes = list(data.classes) if data.classes else None
    if data.format == "tfrecord":
        stored = tfrecord_classes(data)
        if classes is not None and classes != stored:
            raise RecipeError(
                "data.classes: TFRecords keep the classes they were written with "
                f"({', '.join(stored)}); remove data.classes or transform the data again"
            )
        classes = stored
    train_source = read_split(recipe, data.train_split, classes, strict=True)
    if isinstance(train_source, Annotations):
        classes = list(train_source.classes)
        if not classes:  # before the model is built with no class to predict
            raise DataError(
                f"{data.root}: no labelled boxes (and no class names) in the training split "
                f"{data.train_split!r}"
            )
    val_source = None
    if data.val_split is not None and not (data.format == "shapes" and data.shapes.num_val == 0):
        val_source = read_split(recipe, data.val_split, classes)
    return train_source, val_source, classes


def _augment_options(data) -> dict[str, Any] | bool:
    """``make_dataset``'s ``augment``: the recipe's options, or False when disabled."""
    if not data.augment.enabled:
        return False
    options = {k: v for k, v in vars(data.augment).items() if k != "enabled"}
    options["scale_range"] = tuple(options["scale_range"])
    return options


def transform_settings(model: ModelConfig) -> dict[str, Any]:
    """The input-transform arguments of a recipe's model section (``FasterRCNN``'s and
    ``ImageTransform``'s names)."""
    return {
        "image_size": tuple(model.image_size),
        "resize_mode": model.resize_mode,
        "min_size": model.min_size,
        "max_size": model.max_size,
    }


def image_transform(model: ModelConfig):
    """The :class:`~kdetect.models.transform.ImageTransform` the recipe's model will have, for
    the data pipeline (built before the model, which needs the class count)."""
    from kdetect.models.transform import ImageTransform

    return ImageTransform(**transform_settings(model))


#: Model-section keys that every type takes when its constructor has them.
SHARED_KEYS = (
    "backbone",
    "backbone_weights",
    "freeze",
    "frozen_batch_norm",
    "batch_norm_epsilon",
    "fpn_channels",
    "image_size",
    "resize_mode",
    "min_size",
    "max_size",
    "anchor_sizes",
)


def constructor_arguments(model_type: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments of ``model_type``'s class (its settings, with their defaults)."""
    from kdetect.models.registry import model_class

    skip = {"self", "num_classes", "seed", "kwargs"}
    parameters = inspect.signature(model_class(model_type).__init__).parameters
    return {name: p for name, p in parameters.items() if name not in skip}


def backbone_of(model: ModelConfig) -> str:
    """The recipe's backbone: ``model.backbone``, or its type's default when unset."""
    if model.backbone is not None:
        return model.backbone
    return constructor_arguments(model.type)["backbone"].default


def check_options(model: ModelConfig) -> None:
    """``model.options`` against the type's constructor: known names, values of the default's
    kind (a number, a flag, a name, a list); Faster R-CNN takes its settings as keys."""
    if model.type == "faster_rcnn":
        if model.options:
            raise RecipeError(
                "model.options: faster_rcnn's settings are model keys and the model.rpn and "
                "model.box sections (docs/recipes.md)"
            )
        return
    arguments = constructor_arguments(model.type)
    for name, value in model.options.items():
        key = f"model.options.{name}"
        if name in SHARED_KEYS:
            raise RecipeError(f"{key}: set it as model.{name} (shared by every model type)")
        if name not in arguments:
            raise RecipeError(
                f"{key}: not a setting of model.type {model.type}"
                f"{did_you_mean(name, arguments)}; settings: {', '.join(arguments)}"
            )
        default = arguments[name].default
        if default is inspect.Parameter.empty or default is None or value is None:
            continue
        if not _same_kind(value, default):
            raise RecipeError(
                f"{key}: expected a value like its default {default!r}, got {value!r}"
            )


def _same_kind(value, default) -> bool:
    """Whether a recipe value fits a constructor default: a flag for a flag, a number for a
    number (an integer where the default is one), a list for a tuple; a name (or a
    ``"default"`` marker) is left to the constructor's own check."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return isinstance(default, float) or isinstance(value, int)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return True


def model_kwargs(model: ModelConfig, num_classes: int, seed: int | None = None) -> dict[str, Any]:
    """The constructor keyword arguments of a recipe's model section (its type's class)."""
    if model.type != "faster_rcnn":
        arguments = constructor_arguments(model.type)
        shared = {k: getattr(model, k) for k in SHARED_KEYS if k in arguments}
        shared["image_size"] = tuple(model.image_size)
        for key in ("anchor_sizes", "backbone"):  # unset: the type's own default
            if shared.get(key, ()) is None:
                del shared[key]
        return {"num_classes": num_classes, **shared, **model.options, "seed": seed}
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "backbone": backbone_of(model),
        "fpn": model.fpn,
        **transform_settings(model),
        "backbone_weights": model.backbone_weights,
        "freeze": model.freeze,
        "aspect_ratios": tuple(model.aspect_ratios),
        "frozen_batch_norm": model.frozen_batch_norm,
        "fpn_channels": model.fpn_channels,
        "fpn_batch_norm": model.fpn_batch_norm,
        "batch_norm_epsilon": model.batch_norm_epsilon,
        "roi_align_aligned": model.roi_align_aligned,
        "seed": seed,
    }
    if model.anchor_sizes is not None:
        kwargs["anchor_sizes"] = tuple(tuple(level) for level in model.anchor_sizes)
    for name, value in vars(model.rpn).items():
        kwargs[f"rpn_{name}"] = value
    for name, value in vars(model.box).items():
        if name == "reg_weights":
            kwargs["bbox_reg_weights"] = tuple(value)
        else:
            kwargs[f"box_{name}"] = value
    return kwargs


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def model_section(kwargs: dict[str, Any], model_type: str = "faster_rcnn") -> dict[str, Any]:
    """The recipe ``model`` mapping of a type's constructor arguments (the inverse of
    :func:`model_kwargs`). Faster R-CNN: ``rpn_*`` under ``rpn``, ``box_*`` and
    ``bbox_reg_weights`` under ``box``; another type: the shared keys, the rest under
    ``options``. Tuples become lists."""
    if model_type != "faster_rcnn":
        section: dict[str, Any] = {"type": model_type}
        options = {}
        for key, value in kwargs.items():
            (section if key in SHARED_KEYS else options)[key] = _plain(value)
        return {**section, "options": options} if options else section
    section = {}
    rpn: dict[str, Any] = {}
    box: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key.startswith("rpn_"):
            rpn[key.removeprefix("rpn_")] = _plain(value)
        elif key == "bbox_reg_weights":
            box["reg_weights"] = _plain(value)
        elif key.startswith("box_"):
            box[key.removeprefix("box_")] = _plain(value)
        else:
            section[key] = _plain(value)
    if rpn:
        section["rpn"] = rpn
    if box:
        section["box"] = box
    return section


def build_model(recipe: Recipe, num_classes: int):
    """A new, uncompiled detector of the recipe's ``model.type``."""
    from kdetect.models.registry import model_class

    kwargs = model_kwargs(recipe.model, num_classes, recipe.train.seed)
    try:
        return model_class(recipe.model.type)(**kwargs)
    except (TypeError, ValueError) as exc:  # the model checks its settings (levels, sizes...)
        raise RecipeError(f"model: {exc}") from None


def build_schedule(train: TrainConfig, steps_per_epoch: int | None):
    """The learning rate (a float or a :class:`WarmupSchedule`) of the train section."""
    from kdetect.recipes.schedules import WarmupSchedule

    schedule = train.schedule
    lr = train.optimizer.lr
    if schedule.name == "constant" and schedule.warmup_steps == 0:
        return lr
    if steps_per_epoch is None and schedule.name != "constant":
        raise RecipeError(
            f"train.schedule.name: `{schedule.name}` needs the number of steps per epoch; "
            "set train.steps_per_epoch"
        )
    steps_per_epoch = steps_per_epoch or 1
    return WarmupSchedule(
        base_lr=lr,
        kind=schedule.name,
        total_steps=train.epochs * steps_per_epoch,
        warmup_steps=schedule.warmup_steps,
        warmup_factor=schedule.warmup_factor,
        milestones=tuple(m * steps_per_epoch for m in schedule.milestones),
        gamma=schedule.gamma,
        min_lr_factor=schedule.min_lr_factor,
    )


def build_optimizer(train: TrainConfig, steps_per_epoch: int | None):
    """The Keras optimizer of the train section (SGD, Adam or AdamW, with clipping)."""
    import keras

    opt = train.optimizer
    common: dict[str, Any] = {"learning_rate": build_schedule(train, steps_per_epoch)}
    if opt.clipnorm is not None:
        common["clipnorm"] = opt.clipnorm
    if opt.global_clipnorm is not None:
        common["global_clipnorm"] = opt.global_clipnorm
    if opt.name == "sgd":
        return keras.optimizers.SGD(
            momentum=opt.momentum,
            nesterov=opt.nesterov,
            weight_decay=opt.weight_decay or None,
            **common,
        )
    adam = {"beta_1": opt.beta_1, "beta_2": opt.beta_2, "epsilon": opt.epsilon}
    if opt.name == "adam":
        return keras.optimizers.Adam(weight_decay=opt.weight_decay or None, **adam, **common)
    return keras.optimizers.AdamW(weight_decay=opt.weight_decay, **adam, **common)


def build_strategy(train: TrainConfig):
    """The ``tf.distribute`` strategy of the train section (see :mod:`kdetect.distribute`)."""
    from kdetect.distribute import build_strategy as make

    return make(train.distribute)


def run_ground_truth(run_dir: str | Path, split: str | None = None) -> Annotations:
    """The ground truth a run is evaluated on, read with the run's class list.

    Uses the run's ``recipe.yaml``: ``split`` defaults to ``eval.split``, then
    ``data.val_split``. Works for every format but ``tfrecord`` (give the original dataset
    instead), including the synthetic shapes, which are generated again from their seed.
    """
    from kdetect.recipes.loader import load
    from kdetect.runs import CLASSES_FILE, read_classes

    run_dir = Path(run_dir)
    recipe = load(run_dir, check_paths=False)
    classes = read_classes(run_dir / CLASSES_FILE) if (run_dir / CLASSES_FILE).is_file() else None
    split = split or recipe.eval.split or recipe.data.val_split
    if split is None:
        raise RecipeError(
            f"{run_dir}: the recipe has no eval.split or data.val_split; give a split"
        )
    if recipe.data.format == "tfrecord":
        raise RecipeError(f"{run_dir}: trained on TFRecords; evaluate it on the original dataset")
    if recipe.data.format != "shapes" and not (
        recipe.data.root and Path(recipe.data.root).exists()
    ):
        raise RecipeError(f"data.root: path not found: {recipe.data.root} (from {run_dir})")
    return read_split(recipe, split, classes)
