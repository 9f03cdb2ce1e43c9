"""TFRecords in the TensorFlow Object Detection API layout, and ``kdetect dataset transform``.

Each ``tf.train.Example`` holds one image with the TF OD API's keys:

==================================  ========  ===============================================
key                                 type      value
==================================  ========  ===============================================
``image/encoded``                   bytes     the JPEG/PNG file (PNG of the RGB pixels when
                                              the source needed EXIF rotation or conversion)
``image/format``                    bytes     ``jpeg`` or ``png``
``image/height``, ``image/width``   int64     pixels (after EXIF rotation)
``image/filename``                  bytes     basename of the source image
``image/source_id``                 bytes     COCO image id, else the filename stem
``image/object/bbox/xmin`` ...      float     ``xmin``, ``ymin``, ``xmax``, ``ymax`` divided by
                                              width/height: normalised to [0, 1] as the TF OD
                                              API stores them
``image/object/class/label``        int64     label id **+ 1** (TF OD API: 0 is background)
``image/object/class/text``         bytes     class name
``image/object/difficult``          int64     VOC difficult / COCO iscrowd (0 or 1)
==================================  ========  ===============================================

Shards are named ``<split>-00000-of-00004.tfrecord``. The output folder also gets
``classes.json`` (the class names, index = kdetect label id) and ``dataset.json`` (a summary).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kdetect.data.images import encode_for_record, verify_images
from kdetect.data.readers import scan_annotations
from kdetect.data.records import Annotations, Record
from kdetect.plumbing.errors import DataError
from kdetect.plumbing.paths import atomic_path, check_not_input

# TensorFlow is imported inside the functions that need it: ``kdetect dataset inspect`` imports
# this module (KEYS, dataset_summary) for VOC/COCO/CSV sources too, and must stay without it.
KEYS = {
    "encoded": "image/encoded",
    "format": "image/format",
    "height": "image/height",
    "width": "image/width",
    "filename": "image/filename",
    "source_id": "image/source_id",
    "xmin": "image/object/bbox/xmin",
    "ymin": "image/object/bbox/ymin",
    "xmax": "image/object/bbox/xmax",
    "ymax": "image/object/bbox/ymax",
    "label": "image/object/class/label",
    "text": "image/object/class/text",
    "difficult": "image/object/difficult",
}
SHARD_PATTERN = "{split}-{index:05d}-of-{count:05d}.tfrecord"


def record_to_example(record: Record, classes: Sequence[str]) -> bytes:
    """Serialise one record (reading and validating its image) to a ``tf.train.Example``."""
    import tensorflow as tf

    if record.image is not None:
        image = np.asarray(record.image, dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
        encoded, fmt = buffer.getvalue(), "png"
        height, width = image.shape[:2]
    else:
        encoded, fmt, width, height = encode_for_record(record.filename)
    if (width, height) != (record.width, record.height):
        raise DataError(
            f"{record.filename}: image is {width}x{height} but its annotation says "
            f"{record.width}x{record.height}"
        )
    boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
    name = os.path.basename(record.filename)
    source_id = str(record.image_id) if record.image_id is not None else Path(name).stem

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    def strings(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

    feature = {
        KEYS["encoded"]: strings([encoded]),
        KEYS["format"]: strings([fmt.encode()]),
        KEYS["height"]: ints([height]),
        KEYS["width"]: ints([width]),
        KEYS["filename"]: strings([name.encode()]),
        KEYS["source_id"]: strings([source_id.encode()]),
        KEYS["xmin"]: floats(boxes[:, 0] / width),
        KEYS["ymin"]: floats(boxes[:, 1] / height),
        KEYS["xmax"]: floats(boxes[:, 2] / width),
        KEYS["ymax"]: floats(boxes[:, 3] / height),
        KEYS["label"]: ints(np.asarray(record.labels) + 1),
        KEYS["text"]: strings([classes[i].encode() for i in record.labels]),
        KEYS["difficult"]: ints(np.asarray(record.difficult, dtype=np.int64)),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def decode_image(encoded):
    """Decode JPEG/PNG bytes to uint8 ``[h, w, 3]`` with the same pixels Pillow gives.

    JPEGs use the accurate integer DCT (Pillow's default; TensorFlow's default fast DCT differs
    by a few grey levels).
    """
    import tensorflow as tf

    def jpeg():
        return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return image

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def parse_example(serialized):
    """Parse one serialised example into the pipeline's element dict.

    Returns ``{"image": uint8 [h, w, 3], "boxes": float32 [M, 4] absolute pixels,
    "labels": int32 [M] (kdetect ids, from 0), "difficult": bool [M], "filename": string,
    "image_id": string}``.
    """
    import tensorflow as tf

    spec = {
        KEYS["encoded"]: tf.io.FixedLenFeature([], tf.string),
        KEYS["height"]: tf.io.FixedLenFeature([], tf.int64),
        KEYS["width"]: tf.io.FixedLenFeature([], tf.int64),
        KEYS["filename"]: tf.io.FixedLenFeature([], tf.string, default_value=""),
        KEYS["source_id"]: tf.io.FixedLenFeature([], tf.string, default_value=""),
        KEYS["xmin"]: tf.io.VarLenFeature(tf.float32),
        KEYS["ymin"]: tf.io.VarLenFeature(tf.float32),
        KEYS["xmax"]: tf.io.VarLenFeature(tf.float32),
        KEYS["ymax"]: tf.io.VarLenFeature(tf.float32),
        KEYS["label"]: tf.io.VarLenFeature(tf.int64),
        KEYS["difficult"]: tf.io.VarLenFeature(tf.int64),
    }
    parsed = tf.io.parse_single_example(serialized, spec)
    dense = {k: tf.sparse.to_dense(v) for k, v in parsed.items() if isinstance(v, tf.SparseTensor)}
    image = decode_image(parsed[KEYS["encoded"]])
    height = tf.cast(parsed[KEYS["height"]], tf.float32)
    width = tf.cast(parsed[KEYS["width"]], tf.float32)
    boxes = tf.stack(
        [
            dense[KEYS["xmin"]] * width,
            dense[KEYS["ymin"]] * height,
            dense[KEYS["xmax"]] * width,
            dense[KEYS["ymax"]] * height,
        ],
        axis=-1,
    )
    n = tf.shape(boxes)[0]
    difficult = dense[KEYS["difficult"]]
    difficult = tf.cond(
        tf.shape(difficult)[0] == n,
        lambda: tf.cast(difficult, tf.bool),
        lambda: tf.zeros([n], tf.bool),
    )
    return {
        "image": image,
        "boxes": tf.reshape(boxes, [-1, 4]),
        "labels": tf.cast(dense[KEYS["label"]], tf.int32) - 1,
        "difficult": difficult,
        "filename": parsed[KEYS["filename"]],
        "image_id": parsed[KEYS["source_id"]],
    }


def dataset_summary(annotations: Annotations, invalid: int = 0) -> dict[str, Any]:
    """Counts for ``dataset.json`` and ``kdetect dataset inspect``."""
    per_class = dict.fromkeys(annotations.classes, 0)
    per_image = []
    sizes: dict[str, int] = {}
    difficult = 0
    for record in annotations.records:
        per_image.append(len(record.labels))
        difficult += int(np.sum(record.difficult))
        for label in record.labels:
            per_class[annotations.classes[label]] += 1
        key = f"{record.width}x{record.height}"
        sizes[key] = sizes.get(key, 0) + 1
    counts = np.asarray(per_image or [0])
    widths = [r.width for r in annotations.records] or [0]
    heights = [r.height for r in annotations.records] or [0]
    return {
        "images": len(annotations.records),
        "boxes": int(counts.sum()),
        "boxes_per_class": per_class,
        "difficult_boxes": difficult,
        "images_without_boxes": int(np.sum(counts == 0)),
        "boxes_per_image": {
            "min": int(counts.min()),
            "mean": round(float(counts.mean()), 2),
            "max": int(counts.max()),
        },
        "width": {"min": int(min(widths)), "max": int(max(widths))},
        "height": {"min": int(min(heights)), "max": int(max(heights))},
        "sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:10]),
        "invalid_boxes": invalid,
    }


def write_tfrecords(
    annotations: Annotations,
    output_dir: str | os.PathLike,
    split: str,
    shards: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write one split as ``shards`` TFRecord files in ``output_dir``; returns their names.

    Records are spread round-robin so every shard gets a similar mix. ``progress`` is called
    with 1 after each image.
    """
    import tensorflow as tf

    shards = max(1, min(int(shards), len(annotations.records)))
    names = [SHARD_PATTERN.format(split=split, index=i, count=shards) for i in range(shards)]
    writers = [tf.io.TFRecordWriter(str(Path(output_dir) / name)) for name in names]
    try:
        for i, record in enumerate(annotations.records):
            writers[i % shards].write(record_to_example(record, annotations.classes))
            if progress is not None:
                progress(1)
    finally:
        for writer in writers:
            writer.close()
    return names


def transform_dataset(
    format: str,
    data_dir: str | os.PathLike,
    splits: Sequence[str],
    output_dir: str | os.PathLike,
    classes: Sequence[str] | str | None = None,
    limit: int | None = None,
    shards: int = 1,
    on_invalid_box: str = "error",
    images_dir: str | os.PathLike | None = None,
    progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
    allow_outside_root: bool = False,
) -> dict[str, Any]:
    """Read a dataset and write sharded TFRecords, ``classes.json`` and ``dataset.json``.

    The records hold the images' bytes, so, as ``dataset convert``, an image outside the
    dataset's folders is refused unless ``allow_outside_root``.

    All splits are read and validated first (every image verified, all bad ones reported at
    once), then written into a temporary folder next to
    ``output_dir`` that is renamed into place only when everything succeeded, so a failure
    (bad image, bad box, Ctrl-C) leaves nothing half-written. An existing ``output_dir`` is
    replaced only when it holds an earlier transform (it has a ``dataset.json``) or is empty.
    The class list of the first split is used for all splits.

    Returns the ``dataset.json`` summary.
    """
    if not splits:
        raise DataError("give at least one split to transform")
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, [data_dir, images_dir])
    loaded = _read_splits(
        format, data_dir, splits, classes, limit, on_invalid_box, images_dir, allow_outside_root
    )
    verify_images([r.filename for a, _ in loaded.values() for r in a.records if r.image is None])

    with atomic_path(output_dir) as staging:
        staging.mkdir()
        summary: dict[str, Any] = {
            "format": format,
            "source": str(Path(data_dir).resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "classes": list(loaded[splits[0]][0].classes),
            "label_offset_in_tfrecord": 1,
            "bbox_in_tfrecord": "normalised xyxy in [0, 1]",
            "splits": {},
        }
        for split, (annotations, invalid) in loaded.items():
            step = progress_factory(split, len(annotations)) if progress_factory else None
            files = write_tfrecords(annotations, staging, split, shards, step)
            info = dataset_summary(annotations, invalid)
            info["files"] = files
            summary["splits"][split] = info
        (staging / "classes.json").write_text(json.dumps(summary["classes"], indent=2) + "\n")
        (staging / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _check_output_dir(output_dir: Path, inputs: list) -> None:
    """Refuse an output that is an input, a file, or a non-empty folder of something else."""
    check_not_input(output_dir, inputs, "--output", replaces=True)
    if output_dir.exists():
        if not output_dir.is_dir():
            raise DataError(f"{output_dir}: output path exists and is not a folder")
        if any(output_dir.iterdir()) and not (output_dir / "dataset.json").is_file():
            raise DataError(
                f"{output_dir}: output folder is not empty and holds no earlier transform "
                "(dataset.json); choose a new folder"
            )


def _read_splits(
    format: str,
    data_dir: str | os.PathLike,
    splits: Sequence[str],
    classes: Sequence[str] | str | None,
    limit: int | None,
    on_invalid_box: str,
    images_dir: str | os.PathLike | None,
    allow_outside_root: bool,
) -> dict[str, tuple[Annotations, int]]:
    """Split -> (annotations, number of invalid boxes); the first split's classes serve all."""
    loaded: dict[str, tuple[Annotations, int]] = {}
    class_list = classes
    for split in splits:
        annotations, invalid = scan_annotations(
            format,
            data_dir,
            split,
            class_list,
            on_invalid_box,
            images_dir,
            limit=limit,
            allow_outside_root=allow_outside_root,
        )
        if class_list is None:
            class_list = annotations.classes
        loaded[split] = (annotations, len(invalid))
    return loaded
