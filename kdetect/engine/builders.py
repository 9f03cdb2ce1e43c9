"""Turn a recipe's data and train sections into what ``fit()`` needs: the datasets, the
optimizer and its schedule, the distribution strategy; and read a run's ground truth.

The pipeline and the optimizer never see a recipe; the model's own arguments come from
:mod:`kdetect.config.builders`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdetect.config.builders import image_transform
from kdetect.config.loader import load
from kdetect.config.schema import DataConfig, Recipe, TrainConfig
from kdetect.data.images import verify_images
from kdetect.data.readers import read_annotations
from kdetect.data.records import Annotations
from kdetect.data.shapes import make_shapes
from kdetect.engine import distribute
from kdetect.plumbing.errors import DataError, RecipeError, did_you_mean
from kdetect.runs import CLASSES_FILE, read_classes


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
    # TensorFlow: imported when training, not by the light readers of this module
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


def build_schedule(train: TrainConfig, steps_per_epoch: int | None):
    """The learning rate (a float or a :class:`WarmupSchedule`) of the train section."""
    from kdetect.models.schedules import WarmupSchedule  # Keras: imported when training

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
    """The ``tf.distribute`` strategy of the train section (see :mod:`~.distribute`)."""

    return distribute.build_strategy(train.distribute)


def run_ground_truth(run_dir: str | Path, split: str | None = None) -> Annotations:
    """The ground truth a run is evaluated on, read with the run's class list.

    Uses the run's ``recipe.yaml``: ``split`` defaults to ``eval.split``, then
    ``data.val_split``. Works for every format but ``tfrecord`` (give the original dataset
    instead), including the synthetic shapes, which are generated again from their seed.
    """

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
