"""Dataset problems worth knowing before a long training: what ``kdetect dataset inspect`` and
the start of ``kdetect train`` report beside the counts.

* box sizes (``sqrt(w * h)``) and aspect ratios (``h / w``) in the network's frame: quantiles;
* tiny boxes: a side under :data:`TINY_SIDE` pixels in the frame (the backbone's first stride
  already blurs them);
* near-duplicate boxes: two boxes of one class in one image overlapping by IoU above
  :data:`DUPLICATE_IOU` (usually a double annotation);
* duplicate images: files (or in-memory images) with the same content hash, which leak between
  splits or weigh an image twice;
* class imbalance: the largest class count over the smallest non-zero one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from kdetect.data.anchor_fit import iou_matrix
from kdetect.data.records import Annotations, Record

TINY_SIDE = 4.0
DUPLICATE_IOU = 0.9
IMBALANCE = 10.0  # a largest / smallest class ratio above this is reported


def scaled_boxes(record: Record, frame: tuple[int, int] | None) -> np.ndarray:
    """``record``'s boxes [M, 4] scaled into the network ``frame`` (height, width) as training's
    resize scales them (each axis to the frame); its own pixels when ``frame`` is None."""
    boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4)
    if frame is None:
        return boxes
    height, width = frame
    return boxes * np.array([width / record.width, height / record.height] * 2)


def boxes_in_frame(
    annotations: Annotations, frame: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """All boxes [N, 4] of ``annotations`` in ``frame`` (:func:`scaled_boxes`) and their labels."""
    boxes = [np.zeros((0, 4))] + [scaled_boxes(r, frame) for r in annotations.records]
    return np.concatenate(boxes), _all_labels(annotations)


def _all_labels(annotations: Annotations) -> np.ndarray:
    """The label of every box of ``annotations``, record after record; int64 [N]."""
    labels = [np.asarray(r.labels, np.int64).reshape(-1) for r in annotations.records]
    return np.concatenate([np.zeros(0, np.int64), *labels])


def _content_hash(record: Record) -> str | None:
    if record.image is not None:
        return hashlib.sha1(np.ascontiguousarray(record.image).tobytes()).hexdigest()
    try:
        return hashlib.sha1(Path(record.filename).read_bytes()).hexdigest()
    except OSError:
        return None  # unreadable images are reported by the image verification


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    points = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return dict(zip(("min", "p10", "median", "p90", "max"), map(float, points), strict=True))


def quality_report(
    annotations: Annotations, frame: tuple[int, int] | None = None, hash_images: bool = True
) -> dict:
    """The checks of the module docstring; box measures in ``frame`` (height, width) pixels as
    training's resize scales them, or in the images' own pixels when ``frame`` is None.
    ``hash_images=False`` skips reading every file for the duplicate-image check."""
    scales, ratios, tiny, duplicates = [], [], [], []
    hashes: dict[str, list[str]] = {}
    for record in annotations.records:
        boxes = scaled_boxes(record, frame)
        labels = np.asarray(record.labels).reshape(-1)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        scales.append(np.sqrt(np.clip(w * h, 0, None)))
        ratios.append(h / np.maximum(w, 1e-9))
        tiny += [(str(record.filename), i) for i in np.flatnonzero(np.minimum(w, h) < TINY_SIDE)]
        if len(boxes) > 1:
            iou = np.triu(iou_matrix(boxes, boxes), k=1)
            same = labels[:, None] == labels[None, :]
            for i, j in zip(*np.nonzero((iou > DUPLICATE_IOU) & same), strict=True):
                duplicates.append((str(record.filename), int(i), int(j)))
        digest = _content_hash(record) if hash_images else None
        if digest is not None:
            hashes.setdefault(digest, []).append(str(record.filename))
    counts = np.bincount(_all_labels(annotations), minlength=len(annotations.classes))
    present = counts[counts > 0]
    imbalance = float(present.max() / present.min()) if len(present) else None
    return {
        "frame": list(frame) if frame is not None else None,
        "box_size": _quantiles(np.concatenate(scales) if scales else np.zeros(0)),
        "aspect_ratio": _quantiles(np.concatenate(ratios) if ratios else np.zeros(0)),
        "tiny_boxes": tiny,
        "near_duplicate_boxes": duplicates,
        "duplicate_images": [names for names in hashes.values() if len(names) > 1],
        "class_imbalance": imbalance,
        "smallest_class": (
            annotations.classes[int(np.flatnonzero(counts == present.min())[0])]
            if len(present)
            else None
        ),
        "largest_class": (annotations.classes[int(np.argmax(counts))] if len(present) else None),
    }


def quality_warnings(report: dict) -> list[str]:
    """One line per problem found (empty when there are none)."""
    where = "in the {}x{} frame".format(*report["frame"]) if report["frame"] else "in pixels"
    lines = []
    if report["tiny_boxes"]:
        name, index = report["tiny_boxes"][0]
        lines.append(
            f"{len(report['tiny_boxes'])} tiny boxes (a side under {TINY_SIDE:g} px {where}), "
            f"e.g. box {index} of {name}"
        )
    if report["near_duplicate_boxes"]:
        name, i, j = report["near_duplicate_boxes"][0]
        lines.append(
            f"{len(report['near_duplicate_boxes'])} near-duplicate box pairs (same class, IoU > "
            f"{DUPLICATE_IOU:g}), e.g. boxes {i} and {j} of {name}"
        )
    if report["duplicate_images"]:
        first = report["duplicate_images"][0]
        lines.append(
            f"{len(report['duplicate_images'])} groups of identical images, e.g. "
            + " = ".join(first[:3])
        )
    if report["class_imbalance"] is not None and report["class_imbalance"] > IMBALANCE:
        lines.append(
            f"class imbalance: {report['largest_class']} has {report['class_imbalance']:.0f}x "
            f"the boxes of {report['smallest_class']}"
        )
    return lines


def describe(values: dict[str, float] | None, digits: int = 1) -> str:
    """``min / p10 / median / p90 / max`` of a quantile dict, for a table cell."""
    if values is None:
        return "-"
    return " / ".join(f"{values[k]:.{digits}f}" for k in ("min", "p10", "median", "p90", "max"))
