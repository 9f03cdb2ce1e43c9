"""Detections to evaluate: reading kdetect prediction JSON lines or COCO results JSON.

Both formats become one :class:`ImageDetections` per ground-truth record (same order), so the
VOC and COCO evaluators see the same input whatever produced it.

* kdetect prediction JSON lines, one image per line::

    {"file": "a.jpg", "width": 640, "height": 480,
     "objects": [{"bbox": [x1, y1, x2, y2], "label": "dog", "label_id": 11, "score": 0.98}]}

  Lines are matched to records by the file's basename; the class is the ``label`` name when given,
  else ``label_id`` (an index into the ground truth's class list).
* COCO results, one JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``,
  matched to records by image id (COCO ground truth) and to classes by category name.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kdetect.data.records import Annotations
from kdetect.plumbing.errors import DataError


@dataclass
class ImageDetections:
    """The detections of one image: ``boxes`` float64 [N, 4] xyxy pixels, ``scores`` [N],
    ``labels`` int64 [N] (index into the class list)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError("boxes, scores and labels differ in length")

    @classmethod
    def empty(cls) -> ImageDetections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class DetectionsFile:
    """A parsed detections file: ``kind`` is ``"jsonl"`` (rows = one dict per image, with their
    line numbers) or ``"coco"`` (rows = the results list)."""

    path: str
    kind: str
    rows: list[dict]
    lines: list[int]


def read_detections_file(path: str | os.PathLike) -> DetectionsFile:
    """Parse a detections file, telling the two formats apart by the first character.

    Raises ``DataError`` naming the file (and line) when it is missing or malformed.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise DataError(f"{path}: detections file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read detections file ({exc})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed COCO results JSON ({exc})") from None
        for i, row in enumerate(rows):
            _check_coco_result(row, f"{path}: result {i}")
        return DetectionsFile(path, "coco", rows, list(range(len(rows))))
    rows, lines = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON line ({exc.msg})") from None
        _check_prediction_row(row, where)
        rows.append(row)
        lines.append(lineno)
    return DetectionsFile(path, "jsonl", rows, lines)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_box(box, where: str) -> None:
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        raise DataError(f"{where}: 'bbox' must be a list of 4 numbers, got {box!r}")


def _check_prediction_row(row, where: str) -> None:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
    if not isinstance(row.get("file"), str):
        raise DataError(f"{where}: missing 'file' (the image file name)")
    if "objects" not in row:  # an empty list means "nothing found"; a missing key is a mistake
        raise DataError(f"{where}: missing 'objects' (use [] for an image with no detections)")
    objects = row["objects"]
    if not isinstance(objects, list):
        raise DataError(f"{where}: 'objects' must be a list")
    for j, obj in enumerate(objects):
        at = f"{where}: object {j}"
        if not isinstance(obj, dict):
            raise DataError(f"{at}: expected a JSON object")
        _check_box(obj.get("bbox"), at)
        if not _is_number(obj.get("score")):
            raise DataError(f"{at}: missing or non-numeric 'score'")
        if "label" not in obj and "label_id" not in obj:
            raise DataError(f"{at}: needs 'label' (class name) or 'label_id'")


def _check_coco_result(row, where: str) -> None:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object")
    for key in ("image_id", "category_id", "bbox", "score"):
        if key not in row:
            raise DataError(f"{where}: missing {key!r}")
    _check_box(row["bbox"], where)
    if not _is_number(row["score"]):
        raise DataError(f"{where}: non-numeric 'score'")


def _basename_index(annotations: Annotations) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, record in enumerate(annotations.records):
        name = os.path.basename(record.filename)
        if name in index:
            raise DataError(
                f"two ground-truth images share the file name {name!r}; detections are matched "
                "to images by file name"
            )
        index[name] = i
    return index


def detections_from_predictions(
    parsed: DetectionsFile, annotations: Annotations
) -> list[ImageDetections]:
    """Turn kdetect prediction rows into per-record detections (matched by file basename)."""
    by_name = _basename_index(annotations)
    class_index = {name: i for i, name in enumerate(annotations.classes)}
    per_image: list[list] = [[] for _ in annotations.records]
    unknown: list[str] = []
    for row, lineno in zip(parsed.rows, parsed.lines, strict=True):
        where = f"{parsed.path}:{lineno}"
        name = os.path.basename(row["file"])
        if name not in by_name:
            unknown.append(name)
            continue
        for obj in row["objects"]:
            if "label" in obj and obj["label"] is not None:
                if obj["label"] not in class_index:
                    raise DataError(
                        f"{where}: unknown class {obj['label']!r} (ground-truth classes: "
                        f"{', '.join(annotations.classes)})"
                    )
                label = class_index[obj["label"]]
            else:
                label = obj.get("label_id")
                if not (isinstance(label, int) and 0 <= label < len(annotations.classes)):
                    raise DataError(
                        f"{where}: label_id {label!r} outside 0..{len(annotations.classes) - 1}"
                    )
            per_image[by_name[name]].append((obj["bbox"], obj["score"], label))
    _check_unknown(unknown, parsed.path)
    return [_pack(items) for items in per_image]


def detections_from_coco_results(
    parsed: DetectionsFile,
    annotations: Annotations,
    category_names: dict[int, str] | None = None,
    image_ids: Sequence | None = None,
) -> list[ImageDetections]:
    """Turn COCO results into per-record detections.

    ``image_ids`` gives each record's COCO image id (default: ``record.image_id``);
    ``category_names`` maps category ids to class names (default: id = class index + 1, the
    numbering kdetect uses when it writes COCO files).
    """
    if image_ids is None:
        image_ids = [record.image_id for record in annotations.records]
    if any(i is None for i in image_ids):
        raise DataError(
            f"{parsed.path}: COCO results are matched by image_id, but the ground truth has no "
            "image ids; use COCO ground truth or kdetect prediction JSON lines"
        )
    by_id = {image_id: i for i, image_id in enumerate(image_ids)}
    class_index = {name: i for i, name in enumerate(annotations.classes)}
    per_image: list[list] = [[] for _ in annotations.records]
    unknown = []
    for row, i in zip(parsed.rows, parsed.lines, strict=True):
        if row["image_id"] not in by_id:
            unknown.append(str(row["image_id"]))
            continue
        category = row["category_id"]
        if category_names is not None:
            if category not in category_names:
                raise DataError(f"{parsed.path}: result {i}: unknown category_id {category!r}")
            label = class_index.get(category_names[category])
            if label is None:
                raise DataError(
                    f"{parsed.path}: result {i}: category {category_names[category]!r} "
                    "is not a ground-truth class"
                )
        else:
            label = category - 1 if isinstance(category, int) else -1
            if not 0 <= label < len(annotations.classes):
                raise DataError(f"{parsed.path}: result {i}: unknown category_id {category!r}")
        x, y, w, h = row["bbox"]
        per_image[by_id[row["image_id"]]].append(([x, y, x + w, y + h], row["score"], label))
    _check_unknown(unknown, parsed.path, what="image ids")
    return [_pack(items) for items in per_image]


def load_detections(
    path: str | os.PathLike,
    annotations: Annotations,
    category_names: dict[int, str] | None = None,
    image_ids: Sequence | None = None,
) -> list[ImageDetections]:
    """Read a detections file (either format) into one :class:`ImageDetections` per record."""
    parsed = read_detections_file(path)
    if parsed.kind == "coco":
        return detections_from_coco_results(parsed, annotations, category_names, image_ids)
    return detections_from_predictions(parsed, annotations)


def _check_unknown(unknown: list[str], path: str, what: str = "images") -> None:
    if unknown:
        raise DataError(
            f"{path}: detections for {len(unknown)} {what} not in the ground truth "
            f"(first: {unknown[0]!r}); wrong --split or ground truth?"
        )


def _pack(items: list) -> ImageDetections:
    if not items:
        return ImageDetections.empty()
    boxes, scores, labels = zip(*items, strict=True)
    return ImageDetections(np.array(boxes, dtype=np.float64), np.array(scores), np.array(labels))
