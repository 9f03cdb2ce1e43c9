"""Ground truth for evaluation: dataset readers, and the raw COCO JSON where exactness needs it.

Evaluation reads annotations only (never images). Datasets are read with
``kdetect.data.readers.read_annotations``; for COCO ground truth the instances JSON is also kept,
because pycocotools' small/medium/large split uses each annotation's ``area`` (the segmentation
area), which the shared :class:`~kdetect.data.records.Record` does not carry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdetect.data.readers import FORMATS, read_annotations
from kdetect.data.readers.coco import read_coco_json
from kdetect.data.records import Annotations
from kdetect.plumbing.errors import DataError, KdetectError


@dataclass
class GroundTruth:
    """Annotations of a split plus, for COCO sources, the instances dict and the id maps.

    ``image_ids[i]`` is the COCO image id of ``annotations.records[i]`` and ``category_ids[c]``
    the COCO category id of class ``c`` (both ``None`` without a COCO source).
    """

    annotations: Annotations
    coco: dict | None = None
    image_ids: list | None = None
    category_ids: list[int] | None = None

    @property
    def category_names(self) -> dict[int, str] | None:
        if self.coco is None:
            return None
        return {cat["id"]: cat["name"] for cat in self.coco["categories"]}


def guess_format(path: str | os.PathLike, split: str) -> str:
    """The dataset format of ``path``: ``coco`` for a ``.json`` file or a folder holding
    ``instances_<split>.json``, ``csv`` for a ``.csv`` file or ``<split>.csv``, ``yolo`` for a
    ``.yaml`` file or a folder holding ``data.yaml``, else ``voc``."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        if path.suffix.lower() == ".csv":
            return "csv"
        if path.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
    if path.is_dir():
        if (path / "Annotations").is_dir() or (path / "ImageSets").is_dir():
            return "voc"
        if (path / "data.yaml").is_file():
            return "yolo"
        if _coco_candidates(path, split, existing=True):
            return "coco"
        if (path / f"{split}.csv").is_file() or (path / "csv" / f"{split}.csv").is_file():
            return "csv"
    if not path.exists():
        raise DataError(f"{path}: ground truth not found")
    raise DataError(f"{path}: cannot tell the dataset format; pass --type {'|'.join(FORMATS)}")


def _coco_candidates(path: Path, split: str, existing: bool = False) -> list[Path]:
    names = [f"instances_{split}.json", f"{split}.json"]
    folders = [path, path / "annotations", path / "coco"]
    found = [folder / name for folder in folders for name in names]
    return [p for p in found if p.is_file()] if existing else found


def find_coco_json(path: str | os.PathLike, split: str) -> Path:
    """The instances JSON of a COCO source: ``path`` itself when it is a file, else
    ``instances_<split>.json`` in ``path``, ``path/annotations`` or ``path/coco``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise DataError(f"{path}: ground truth not found")
    found = _coco_candidates(path, split, existing=True)
    if not found:
        raise DataError(f"{path}: no instances_{split}.json (looked in ., annotations/, coco/)")
    return found[0]


def annotations_to_coco(annotations: Annotations) -> tuple[dict, list[int], list[int]]:
    """Annotations -> COCO instances dict for pycocotools.

    Image ids are the record positions + 1, category ids the class indices + 1, ``area`` the box
    area ``w * h`` and ``iscrowd`` the difficult flag. Returns ``(dataset, image_ids,
    category_ids)``.
    """
    image_ids = list(range(1, len(annotations.records) + 1))
    category_ids = list(range(1, len(annotations.classes) + 1))
    images, anns = [], []
    for image_id, record in zip(image_ids, annotations.records, strict=True):
        images.append(
            {
                "id": image_id,
                "file_name": os.path.basename(record.filename),
                "width": int(record.width),
                "height": int(record.height),
            }
        )
        for box, label, difficult in zip(
            record.boxes.astype(np.float64), record.labels, record.difficult, strict=True
        ):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": int(bool(difficult)),
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(annotations.classes)]
    dataset = {"images": images, "annotations": anns, "categories": categories}
    return dataset, image_ids, category_ids


def link_coco(annotations: Annotations, dataset: dict, source: str = "COCO JSON") -> GroundTruth:
    """Pair annotations with the COCO dict they came from: each record's image id (by
    ``record.image_id``, else by file basename) and each class's category id (by name)."""
    ids = {image["id"] for image in dataset["images"]}
    by_name = {os.path.basename(image["file_name"]): image["id"] for image in dataset["images"]}
    image_ids = []
    for record in annotations.records:
        if record.image_id in ids:
            image_ids.append(record.image_id)
        elif os.path.basename(record.filename) in by_name:
            image_ids.append(by_name[os.path.basename(record.filename)])
        else:
            raise DataError(f"{source}: no image {record.filename!r}")
    by_cat = {cat["name"]: cat["id"] for cat in dataset["categories"]}
    missing = [name for name in annotations.classes if name not in by_cat]
    if missing:
        raise DataError(f"{source}: no category named {missing[0]!r}")
    category_ids = [by_cat[name] for name in annotations.classes]
    return GroundTruth(annotations, dataset, image_ids, category_ids)


def load_ground_truth(
    path: str | os.PathLike,
    format: str | None = None,
    split: str = "val",
    classes: list[str] | None = None,
    on_invalid_box: str = "error",
    check_images: bool = False,
) -> GroundTruth:
    """Read the ground truth of ``split`` with ``kdetect.data.read_annotations``.

    ``path`` is a dataset folder or, for COCO/CSV, the annotation file itself; ``format`` is
    guessed from the path when ``None``; ``classes`` fixes the class order (e.g. the model's
    ``classes.json``); ``on_invalid_box`` (``error``, ``clip``, ``drop``) is passed to the reader.
    For COCO the instances JSON is kept too (see :class:`GroundTruth`). Images are not opened
    unless ``check_images``.
    """
    if format is None:
        format = guess_format(path, split)
    if format not in FORMATS:
        raise KdetectError(f"unknown ground-truth format {format!r}; use one of {FORMATS}")
    if not Path(path).exists():
        raise DataError(f"{path}: ground truth not found")
    if format == "coco":
        path = find_coco_json(path, split)
    annotations = read_annotations(
        format,
        os.fspath(path),
        split,
        classes=classes,
        on_invalid_box=on_invalid_box,
        check_images=check_images,
    )
    if format == "coco":
        return link_coco(annotations, read_coco_json(Path(path)), os.fspath(path))
    return GroundTruth(annotations)
