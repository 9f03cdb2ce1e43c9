"""``kdetect dataset inspect``: counts for a dataset and drawings of its ground truth.

Works on a source dataset (VOC, COCO or CSV) or on TFRecords written by
``kdetect dataset transform`` (read back without decoding images, except the ones drawn).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kdetect.data.images import find_bad_images, load_image
from kdetect.data.readers import (
    FORMATS,
    InvalidBox,
    fallback_class_names,
    scan_annotations,
    source_folders,
)
from kdetect.data.records import Annotations, Record
from kdetect.data.tfrecord import KEYS, dataset_summary
from kdetect.plumbing.errors import DataError
from kdetect.plumbing.paths import input_guard

# Distinct, readable colours for the first classes; later ones cycle.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]  # fmt: skip


@dataclass
class Inspection:
    """What ``inspect`` found: the summary counts, invalid boxes, bad images and what was drawn."""

    kind: str  # "voc" | "coco" | "csv" | "tfrecord"
    split: str | None
    summary: dict[str, Any]
    invalid: list[InvalidBox]
    drawn: list[str]
    bad_images: list[str] = field(default_factory=list)  # one error line per unusable image
    annotations: Any = None  # the records read (kdetect.data.records.Annotations)


def detect_format(path: str | os.PathLike) -> str:
    """Guess ``voc``, ``coco``, ``csv``, ``yolo`` or ``tfrecord`` from what is at ``path`` (a
    Label Studio export is a ``.json`` file too: pass ``--type labelstudio``)."""
    p = Path(path)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix == ".csv":
            return "csv"
        if suffix in (".yaml", ".yml"):
            return "yolo"
        return "tfrecord"
    if not p.exists():
        if any(ch in str(path) for ch in "*?["):
            return "tfrecord"
        raise DataError(f"{path}: no such file or folder")
    if (p / "dataset.json").is_file() or any(p.glob("*.tfrecord")):
        return "tfrecord"
    if (p / "Annotations").is_dir():
        return "voc"
    if (p / "data.yaml").is_file():
        return "yolo"
    if (p / "annotations").is_dir() and any((p / "annotations").glob("*.json")):
        return "coco"
    if any(p.glob("*.csv")):
        return "csv"
    raise DataError(f"{path}: cannot tell the dataset format; pass --type {'|'.join(FORMATS)}")


def read_tfrecord_annotations(
    files: Sequence[str], keep_images: int = 0
) -> tuple[Annotations, list[InvalidBox], list[bytes]]:
    """Read boxes and names back from TFRecords without decoding images.

    Returns the annotations, the boxes that are degenerate or outside [0, 1], and the encoded
    bytes of the first ``keep_images`` images. Class names come from ``classes.json`` next to
    the files, else from the examples' class texts (``class_<i>`` for a label never named).
    """
    # TensorFlow loads only when TFRecords are read: inspecting a VOC/COCO/CSV source and the
    # CLI's start-up stay without it.
    import tensorflow as tf

    classes_file = Path(files[0]).parent / "classes.json"
    classes: list[str] = json.loads(classes_file.read_text()) if classes_file.is_file() else []
    records, invalid, encoded = [], [], []
    for path in files:
        try:
            for raw in tf.data.TFRecordDataset(path):
                feature = tf.train.Example.FromString(raw.numpy()).features.feature
                record, bad_boxes = _example_record(feature, classes, str(path))
                records.append(record)
                invalid.extend(bad_boxes)
                if len(encoded) < keep_images:
                    encoded.append(_feature_values(feature, KEYS["encoded"])[0])
        except tf.errors.OpError as exc:
            raise DataError(f"{path}: not a readable TFRecord file ({exc.message})") from None
    return Annotations(classes, records), invalid, encoded


def _feature_values(feature: Any, key: str) -> list:
    """The values of one ``tf.train.Feature``, whichever list type holds them."""
    f = feature[key]
    return list(f.float_list.value or f.int64_list.value or f.bytes_list.value)


def _example_record(feature: Any, classes: list[str], path: str) -> tuple[Record, list[InvalidBox]]:
    """One example as a record (boxes back in pixels) and its invalid boxes; names the classes
    its labels use in ``classes`` (a fallback ``class_<i>`` gives way to the example's text)."""
    width = int(_feature_values(feature, KEYS["width"])[0])
    height = int(_feature_values(feature, KEYS["height"])[0])
    name = _feature_values(feature, KEYS["filename"])[0].decode()
    norm = np.stack(
        [
            np.asarray(_feature_values(feature, KEYS[k]), np.float32)
            for k in ("xmin", "ymin", "xmax", "ymax")
        ],
        axis=-1,
    ).reshape(-1, 4)
    labels = np.asarray(_feature_values(feature, KEYS["label"]), np.int64) - 1
    texts = [t.decode() for t in _feature_values(feature, KEYS["text"])]
    for label, text in zip(labels, texts, strict=False):
        if len(classes) <= label:
            classes.extend(fallback_class_names(label + 1)[len(classes) :])
        if classes[label].startswith("class_"):
            classes[label] = text
    difficult = _feature_values(feature, KEYS["difficult"]) or [0] * len(labels)
    invalid = []
    for k, box in enumerate(norm):
        problem = None
        if not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
            problem = "is degenerate"
        elif box.min() < 0 or box[2] > 1 or box[3] > 1:
            problem = "reaches outside the image"
        if problem:
            pixels = tuple(float(v) for v in box * [width, height, width, height])
            text = texts[k] if k < len(texts) else "?"
            invalid.append(InvalidBox(f"{path}: {name} box {k + 1}", name, text, pixels, problem))
    record = Record(
        filename=name,
        width=width,
        height=height,
        boxes=norm * np.asarray([width, height, width, height], np.float32),
        labels=labels.astype(np.int32),
        difficult=np.asarray(difficult, bool),
    )
    return record, invalid


def inspect_dataset(
    path: str | os.PathLike,
    format: str | None = None,
    split: str = "train",
    classes: Sequence[str] | str | None = None,
    images_dir: str | os.PathLike | None = None,
    show: int = 0,
    output: str | os.PathLike | None = None,
) -> Inspection:
    """Count images, boxes per class/image, sizes and invalid boxes; draw ``show`` images.

    ``path`` is a VOC/COCO/CSV dataset (``format`` guessed when ``None``) or TFRecords (a
    transform folder, a file or a glob). Invalid boxes are counted, not fatal. Every image of
    a source dataset is verified (:func:`~kdetect.data.images.verify_image`: header, size
    limits, data); the bad ones are listed in ``bad_images`` and not drawn. TFRecords hold
    images checked by ``transform``.
    """
    # The pipeline module imports TensorFlow; only TFRecord sources need it.
    from kdetect.data.pipeline import tfrecord_files

    kind = (format or detect_format(path)).lower()
    if show and output is None:
        raise DataError("show: the drawn images need an output folder")
    encoded: list[bytes] = []
    bad: dict[str, str] = {}
    if kind == "tfrecord":
        files = tfrecord_files(path, split if Path(path).is_dir() else None)
        annotations, invalid, encoded = read_tfrecord_annotations(files, int(show))
        if not annotations.records:
            raise DataError(f"{path}: the TFRecords hold no images")
    elif kind in FORMATS:
        annotations, invalid = scan_annotations(
            kind, path, split, classes, "drop", images_dir, warn=False
        )
        bad = find_bad_images([r.filename for r in annotations.records if r.image is None])
    else:
        expected = ", ".join((*FORMATS, "tfrecord"))
        raise DataError(f"unknown dataset type {format!r}; expected one of {expected}")
    summary = dataset_summary(annotations, len(invalid))
    summary["classes"] = list(annotations.classes)
    drawn: list[str] = []
    if show:
        out = Path(output)
        shown = [r for r in annotations.records if str(r.filename) not in bad][: int(show)]
        targets = [out / f"{i:04d}_{Path(r.filename).stem}.jpg" for i, r in enumerate(shown)]
        images = [str(r.filename) for r in annotations.records]
        # Drawn pictures inside an image folder would be read back as part of the dataset.
        folders = source_folders(kind, images) if kind in FORMATS else ()
        check = input_guard([path, *images], "--output", whole=folders)
        for target in targets:
            check(target)
        out.mkdir(parents=True, exist_ok=True)
        for i, (record, target) in enumerate(zip(shown, targets, strict=True)):
            if encoded:
                with Image.open(io.BytesIO(encoded[i])) as im:
                    pixels = np.asarray(im.convert("RGB"))
            elif record.image is not None:
                pixels = np.asarray(record.image, np.uint8)
            else:
                pixels = load_image(record.filename)
            draw_boxes(pixels, record, annotations.classes).save(target, quality=92)
            drawn.append(str(target))
    return Inspection(kind, split, summary, invalid, drawn, list(bad.values()), annotations)


def draw_boxes(image: np.ndarray, record: Record, classes: Sequence[str]) -> Image.Image:
    """Draw a record's boxes and class names on its image (difficult ones dashed-looking thin)."""
    picture = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    thickness = max(1, round(max(picture.size) / 400))
    for box, label, difficult in zip(record.boxes, record.labels, record.difficult, strict=True):
        colour = PALETTE[int(label) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        width = 1 if difficult else thickness
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = classes[label] if 0 <= label < len(classes) else str(label)
        if difficult:
            text += " (difficult)"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 2], fill=colour)
        draw.text((x1 + 2, ty), text, fill=(0, 0, 0), font=font)
    return picture
