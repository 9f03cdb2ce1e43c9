"""The tf.data input pipeline: any source -> fixed-size batches in kdetect's batch format.

``make_dataset`` reads TFRecords (from ``kdetect dataset transform``), an ``Annotations`` object
(images from disk or held in memory, as the synthetic shapes dataset does) or a
``tf.data.Dataset`` of single examples, and yields::

    {"images": float32 [B, H, W, 3] raw pixels 0..255,
     "bounding_boxes": {"boxes": float32 [B, max_boxes, 4] xyxy pixels of the image as fed,
                        "labels": int32 [B, max_boxes], -1 = padding}}

Each image is resized by the model's rule (its ``transform``, or ``fit`` into a given
``image_size``), placed at the top-left of the frame and padded with zeros, so every shape is
static. With the ``min_max`` rule (torchvision's) ``bounding_boxes`` also holds
``image_sizes`` ([B, 2] = h, w of each image's content in the frame), which a model's training
uses as torchvision's does (Faster R-CNN clips its proposals to them). In evaluation mode
(``training=False``) each batch also carries ``filename``, ``image_id``, ``original_size``
([B, 2] = h, w) and ``scale`` ([B]; fed pixels = original pixels * scale) plus
``bounding_boxes["difficult"]``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from kdetect.data import augment as aug
from kdetect.data.images import load_image
from kdetect.data.records import Annotations
from kdetect.data.tfrecord import parse_example
from kdetect.models.transform import ImageTransform
from kdetect.plumbing.errors import DataError

logger = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE


def make_dataset(
    source: str | os.PathLike | Sequence[str] | Annotations | tf.data.Dataset,
    image_size: ImageTransform | tuple[int, int] | int = (640, 640),
    batch_size: int = 2,
    augment: Mapping[str, Any] | bool | None = None,
    shuffle: bool | None = None,
    max_boxes: int = 100,
    training: bool = True,
    seed: int | None = None,
    keep_difficult: bool | None = None,
    split: str | None = None,
    shuffle_buffer: int = 1024,
    num_parallel_calls: int | None = None,
    repeat: bool = False,
    start_batch: int = 0,
) -> tf.data.Dataset:
    """Build a batched, prefetched ``tf.data.Dataset`` of detection examples.

    Args:
        source: a TFRecord file, glob or list of files; a TFRecord folder written by
            ``kdetect dataset transform`` (with ``split=``); an ``Annotations`` object; or a
            ``tf.data.Dataset`` of single examples, each ``{"image": [h, w, 3],
            "boxes": [M, 4] xyxy pixels, "labels": [M]}`` (optionally ``"difficult"``) or
            ``{"images": ..., "bounding_boxes": {"boxes": ..., "labels": ...}}``.
        image_size: the model's input transform (``model.transform``: the frame and the
            resize rule predict uses), or ``(height, width)`` of the batch (an int means
            square), into which images are resized by the ``fit`` rule.
        batch_size: images per batch.
        augment: augmentation options (see ``kdetect.data.augment.DEFAULT_AUGMENT``);
            ``None`` = defaults when training, ``False`` = none. Ignored when not training.
        shuffle: shuffle examples; defaults to ``training``.
        max_boxes: boxes per image after padding; extra boxes are dropped with a warning.
        training: training mode (augment, drop difficult boxes, drop the last partial batch)
            or evaluation mode (deterministic, keeps every image, adds ids and sizes).
        seed: makes shuffling and augmentation reproducible.
        keep_difficult: keep difficult/iscrowd boxes in the targets; defaults to
            ``not training``.
        split: the split to read when ``source`` is a TFRecord folder.
        shuffle_buffer: examples held for shuffling TFRecords.
        num_parallel_calls: parallelism of decoding and augmentation (default: autotune).
        repeat: repeat forever, pass after pass (see below).
        start_batch: with ``repeat``, the batches of the stream to skip (a resumed run's
            position); cheap, no skipped image is read.

    A training dataset is a sequence of passes over the data. Pass ``p`` has its own order
    (shuffled with a key derived from ``(seed, p)``) and the ``i``-th example of the pass is
    augmented with a key derived from ``(seed, p, i)``; each pass is batched on its own (its
    last partial batch dropped). So with a ``seed``, batch ``g`` of a repeated dataset is a
    pure function of ``(seed, g)``, and ``start_batch=g`` starts the stream exactly there.
    Without ``repeat``, each iteration over the dataset is one pass with a new key.
    """
    # (Long through its documented arguments; the body is about 40 lines.)
    transform = batch_transform(image_size)
    if batch_size < 1 or max_boxes < 1:
        raise ValueError("batch_size and max_boxes must be positive")
    if start_batch and not repeat:
        raise ValueError("start_batch needs repeat=True")
    shuffle = training if shuffle is None else shuffle
    keep_difficult = (not training) if keep_difficult is None else keep_difficult
    config = aug.augment_config(augment) if training else None
    parallel = AUTOTUNE if num_parallel_calls is None else num_parallel_calls

    ordered, count, most_boxes = _examples(source, shuffle, shuffle_buffer, parallel, split)
    if most_boxes is not None and most_boxes > max_boxes:
        logger.warning(
            "some images have up to %d boxes; only the first max_boxes=%d are kept",
            most_boxes,
            max_boxes,
        )
    if training and count is not None:
        check_batch_fits(count, batch_size)

    warn_in_graph = most_boxes is None

    def prepare(example, element_key):
        return _prepare(
            example,
            element_key,
            transform=transform,
            max_boxes=max_boxes,
            config=config,
            keep_difficult=keep_difficult,
            training=training,
            warn_in_graph=warn_in_graph,
        )

    def one_pass(pass_key, skip=0):
        """One pass in the order of ``pass_key``, without its first ``skip`` examples."""
        element_keys = _fold_in(pass_key, 1)
        dataset = ordered(_fold_in(pass_key, 0)).enumerate().skip(skip)
        dataset = dataset.map(
            lambda index, example: prepare(example, _fold_in(element_keys, index)),
            num_parallel_calls=parallel,
            deterministic=not shuffle or None,
        )
        return dataset.batch(batch_size, drop_remainder=training)

    base = _base_key(seed)
    if repeat:
        first, skip = _start(start_batch, count, batch_size, source, split)
        dataset = tf.data.Dataset.counter(first).flat_map(
            lambda p: one_pass(_fold_in(base, p), tf.where(p == first, np.int64(skip), 0))
        )
    elif training:
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        dataset = draws.flat_map(lambda draw: one_pass(_fold_in(base, draw)))
        if count is not None:
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(count // batch_size))
    else:
        dataset = one_pass(base)
    options = tf.data.Options()
    options.deterministic = seed is not None or not shuffle
    options.experimental_optimization.map_parallelization = True
    return dataset.with_options(options).prefetch(AUTOTUNE)


def check_batch_fits(count: int, batch_size: int) -> None:
    """A training set of ``count`` images must fill one batch (partial batches are dropped)."""
    if count < batch_size:
        raise DataError(
            f"the dataset has {count} images, fewer than batch_size={batch_size}; training "
            "drops partial batches, so it would yield nothing"
        )


def count_examples(source: str | os.PathLike | Sequence[str] | Annotations, split=None) -> int:
    """The number of images of an ``Annotations`` object or of TFRecords (from their
    ``dataset.json``, else by reading the files once)."""
    if hasattr(source, "records"):
        return len(source.records)
    files = tfrecord_files(source, split)
    count, _ = _summary_counts(files)
    if count is None:
        count = int(tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda n, _: n + 1))
    return count


def _base_key(seed: int | None) -> tf.Tensor:
    """The stateless key all of a dataset's randomness derives from (drawn when no seed)."""
    if seed is None:
        seed = int(np.random.default_rng().integers(2**62))
    return tf.constant([seed, 0], tf.int64)


def _fold_in(key, data) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))


def _start(start_batch: int, count, batch_size: int, source, split) -> tuple[int, int]:
    """(first pass, examples of it to skip) of the batch ``start_batch`` of a repeated stream."""
    if start_batch == 0:
        return 0, 0
    if count is None:
        if isinstance(source, tf.data.Dataset):
            raise ValueError("start_batch needs a source of known size (not a tf.data.Dataset)")
        count = count_examples(source, split)
    passes, batch = divmod(start_batch, count // batch_size)
    return passes, batch * batch_size


def batch_transform(image_size: ImageTransform | tuple[int, int] | int) -> ImageTransform:
    """The transform of ``make_dataset``'s ``image_size``: a model's, or ``fit`` into a size."""
    if isinstance(image_size, ImageTransform):
        return image_size
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    return ImageTransform(image_size, "fit", size_divisible=1)


# --------------------------------------------------------------------------------------------
# Sources -> a dataset of single examples


def _examples(source, shuffle, shuffle_buffer, parallel, split):
    """Return ``(ordered, number of images or None, most boxes or None)``: ``ordered(key)`` is
    a dataset of example dicts in the order of one pass, shuffled by the stateless ``key``."""
    if isinstance(source, tf.data.Dataset):
        examples = source.map(_normalise_example, num_parallel_calls=parallel)
        return (lambda key: examples), None, None
    if isinstance(source, Annotations):
        return _from_annotations(source, shuffle, parallel)
    if hasattr(source, "records") and hasattr(source, "classes"):
        return _from_annotations(Annotations(source.classes, source.records), shuffle, parallel)
    return _from_tfrecords(source, shuffle, shuffle_buffer, parallel, split)


def _permutation(n, key) -> tf.Tensor:
    """A random order of ``range(n)`` (``n`` an int or a scalar tensor), a pure function of
    ``key``."""
    return tf.argsort(tf.random.stateless_uniform([n], key))


def _normalise_example(example):
    if "bounding_boxes" in example:
        image = example.get("images", example.get("image"))
        bbox = example["bounding_boxes"]
        boxes, labels = bbox["boxes"], bbox.get("labels", bbox.get("classes"))
        difficult = bbox.get("difficult")
    else:
        image = example.get("image", example.get("images"))
        boxes, labels = example["boxes"], example["labels"]
        difficult = example.get("difficult")
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    if difficult is None:
        difficult = tf.zeros_like(labels, dtype=tf.bool)
    # Padding rows (label -1) of an already padded example are not objects.
    real = labels >= 0
    return {
        "image": image,
        "boxes": tf.boolean_mask(boxes, real),
        "labels": tf.boolean_mask(labels, real),
        "difficult": tf.boolean_mask(tf.cast(difficult, tf.bool), real),
        "filename": _as_string(example.get("filename", "")),
        "image_id": _as_string(example.get("image_id", "")),
    }


def _as_string(value) -> tf.Tensor:
    value = tf.convert_to_tensor(value)
    return value if value.dtype == tf.string else tf.strings.as_string(value)


def _from_annotations(annotations: Annotations, shuffle, parallel):
    records = annotations.records
    if not records:
        raise DataError("the annotations hold no images")
    filenames = [os.path.basename(r.filename) for r in records]
    image_ids = [
        str(r.image_id) if r.image_id is not None else Path(r.filename).stem for r in records
    ]

    def load(index):
        record = records[int(index)]
        if record.image is not None:
            image = np.asarray(record.image, dtype=np.uint8)
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
        else:
            image = load_image(record.filename)
            if image.shape[:2] != (record.height, record.width):
                raise DataError(
                    f"{record.filename}: image is {image.shape[1]}x{image.shape[0]} but its "
                    f"annotation says {record.width}x{record.height}"
                )
        return image, record.boxes, record.labels, record.difficult

    def to_example(index):
        image, boxes, labels, difficult = tf.numpy_function(
            load, [index], [tf.uint8, tf.float32, tf.int32, tf.bool], stateful=False
        )
        image.set_shape([None, None, 3])
        return {
            "image": image,
            "boxes": tf.reshape(boxes, [-1, 4]),
            "labels": tf.reshape(labels, [-1]),
            "difficult": tf.reshape(difficult, [-1]),
            "filename": tf.gather(filenames, index),
            "image_id": tf.gather(image_ids, index),
        }

    def ordered(key):
        order = _permutation(len(records), key) if shuffle else tf.range(len(records))
        return tf.data.Dataset.from_tensor_slices(tf.cast(order, tf.int64)).map(
            to_example, num_parallel_calls=parallel, deterministic=not shuffle or None
        )

    most = max((len(r.labels) for r in records), default=0)
    return ordered, len(records), most


def tfrecord_files(
    source: str | os.PathLike | Sequence[str], split: str | None = None
) -> list[str]:
    """Resolve a TFRecord file, glob, list, or transform folder (+ split) into sorted files."""
    if isinstance(source, (list, tuple)):
        files = []
        for item in source:
            files.extend(tfrecord_files(item, split))
        return files
    path = Path(source)
    if path.is_dir():
        if split is None:
            splits = sorted({p.name.split("-")[0] for p in path.glob("*-of-*.tfrecord")})
            if len(splits) != 1:
                raise DataError(
                    f"{path}: a TFRecord folder needs split= (found splits: "
                    f"{', '.join(splits) or 'none'})"
                )
            split = splits[0]
        files = sorted(glob.glob(str(path / f"{split}-*-of-*.tfrecord")))
        if not files:
            raise DataError(f"{path}: no TFRecord files for split {split!r}")
        return files
    files = sorted(glob.glob(str(source)))
    if not files:
        raise DataError(f"{source}: no TFRecord file matches")
    return files


def _from_tfrecords(source, shuffle, shuffle_buffer, parallel, split):
    files = tfrecord_files(source, split)
    count, most = _summary_counts(files)

    def ordered(key):
        names = tf.constant(files)
        if shuffle and len(files) > 1:
            names = tf.gather(names, _permutation(len(files), _fold_in(key, 0)))
        dataset = tf.data.Dataset.from_tensor_slices(names).interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 4),
            num_parallel_calls=min(len(files), 4) if len(files) > 1 else None,
            deterministic=not shuffle or None,
        )
        if shuffle:
            # Blocks of ``shuffle_buffer`` serialised records, each put in an order keyed by
            # (pass, block): a pure function of the key, unlike ``Dataset.shuffle`` with a
            # tensor seed (which TensorFlow refuses under op determinism with global seed 0).
            block_key = _fold_in(key, 1)

            def shuffled(index, block):
                order = _permutation(tf.size(block), _fold_in(block_key, index))
                return tf.data.Dataset.from_tensor_slices(tf.gather(block, order))

            dataset = dataset.batch(shuffle_buffer).enumerate().flat_map(shuffled)
        return dataset.map(
            parse_example, num_parallel_calls=parallel, deterministic=not shuffle or None
        )

    return ordered, count, most


def _summary_counts(files: list[str]) -> tuple[int | None, int | None]:
    """Image count and most boxes per image from ``dataset.json`` when all files are in it."""
    folder = Path(files[0]).parent
    summary_path = folder / "dataset.json"
    if not summary_path.is_file() or any(Path(f).parent != folder for f in files):
        return None, None
    try:
        summary = json.loads(summary_path.read_text())
        names = {Path(f).name for f in files}
        count, most = 0, 0
        covered = set()
        for info in summary["splits"].values():
            if names & set(info["files"]):
                if not set(info["files"]) <= names:
                    return None, None
                covered |= set(info["files"])
                count += int(info["images"])
                most = max(most, int(info["boxes_per_image"]["max"]))
        return (count, most) if covered == names else (None, None)
    except (ValueError, KeyError, TypeError):
        return None, None


# --------------------------------------------------------------------------------------------
# One example -> fixed-size tensors


def _prepare(example, key, transform, max_boxes, config, keep_difficult, training, warn_in_graph):
    image = example["image"]
    original_size = tf.shape(image)[:2]
    boxes = tf.reshape(tf.cast(example["boxes"], tf.float32), [-1, 4])
    labels = tf.cast(example["labels"], tf.int32)
    difficult = tf.cast(example["difficult"], tf.bool)
    if not keep_difficult:
        keep = tf.logical_not(difficult)
        boxes, labels, difficult = (tf.boolean_mask(t, keep) for t in (boxes, labels, difficult))

    seeds = tf.random.experimental.stateless_split(key, 3)
    if config is not None:
        if config["horizontal_flip"] > 0:
            image, boxes = aug.horizontal_flip(image, boxes, seeds[0], config["horizontal_flip"])
        low, high = config["scale_range"]
        factor = tf.random.stateless_uniform([], seeds[1], low, high) if high > low else low
        image, boxes, scale = aug.resize_crop(image, boxes, transform, factor, seeds[2])
        if any(config[k] for k in ("brightness", "contrast", "saturation", "hue")):
            image = aug.color_jitter(
                image,
                seeds[0],
                config["brightness"],
                config["contrast"],
                config["saturation"],
                config["hue"],
            )
        min_size = float(config["min_box_size"])
    else:
        image, boxes, scale = aug.resize_crop(image, boxes, transform)
        min_size = 0.0
    content_size = tf.shape(image)[:2]
    image = aug.pad_image(image, transform.image_size)  # the padding stays zero
    keep = aug.keep_boxes(boxes, min_size)
    boxes, labels, difficult = (tf.boolean_mask(t, keep) for t in (boxes, labels, difficult))
    if warn_in_graph:
        _warn_if_too_many(tf.shape(labels)[0], max_boxes)
    boxes, labels, difficult = aug.pad_boxes(boxes, labels, max_boxes, difficult)
    image = tf.ensure_shape(tf.cast(image, tf.float32), [*transform.image_size, 3])
    out = {"images": image, "bounding_boxes": {"boxes": boxes, "labels": labels}}
    if transform.resize_mode == "min_max":  # torchvision's rule: its training clips to these
        out["bounding_boxes"]["image_sizes"] = tf.cast(content_size, tf.int32)
    if not training:
        out["bounding_boxes"]["difficult"] = difficult
        out["filename"] = example["filename"]
        out["image_id"] = example["image_id"]
        out["original_size"] = tf.cast(original_size, tf.int32)
        out["scale"] = tf.cast(scale, tf.float32)
    return out


def _warn_if_too_many(n: tf.Tensor, max_boxes: int) -> None:
    def warn():
        tf.print(
            "kdetect: an image has",
            n,
            "boxes; only max_boxes =",
            max_boxes,
            "are kept",
            output_stream=sys.stderr,
        )
        return tf.constant(0)

    tf.cond(n > max_boxes, warn, lambda: tf.constant(0))
