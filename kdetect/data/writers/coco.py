"""COCO: ``annotations/instances_<split>.json`` and the images in ``images/<split>/``.

Categories are the class list in label order with ids ``1..n`` (all of them, used or not, so
the order survives); ``bbox`` is ``[x, y, w, h]``; the difficult flag becomes ``iscrowd``.
Image ids are the source's when they are unique integers, else ``1..n`` in record order.
"""

from __future__ import annotations

import json
from pathlib import Path

from kdetect.data.records import Annotations, Record
from kdetect.data.writers.common import ImageFiles


def write_coco(parts: dict[str, Annotations], root: Path, images: ImageFiles) -> None:
    """One instances JSON per split."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, part in parts.items():
        names = [Path(images.place(r, f"images/{split}")).name for r in part.records]
        doc = coco_document(part, names)
        path = root / "annotations" / f"instances_{split}.json"
        path.write_text(json.dumps(doc), encoding="utf-8")


def coco_categories(classes: list[str]) -> list[dict]:
    """``[{"id": 1, "name": classes[0]}, ...]``: category id = label id + 1."""
    return [{"id": i + 1, "name": name, "supercategory": "none"} for i, name in enumerate(classes)]


def image_ids(records: list[Record]) -> list[int]:
    """The records' own ids when they are unique integers, else ``1..n``."""
    ids = [r.image_id for r in records]
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids) and len(set(ids)) == len(
        ids
    ):
        return ids
    return list(range(1, len(records) + 1))


def xywh(box) -> list[float]:
    """``[x, y, w, h]`` of an ``xyxy`` box (exact: float32 values differ exactly in float64)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_document(part: Annotations, names: list[str]) -> dict:
    """The instances JSON of one split; ``names`` are the image file names to write."""
    doc_images, doc_annotations = [], []
    ids = image_ids(part.records)
    for record, image_id, name in zip(part.records, ids, names, strict=True):
        doc_images.append(
            {"id": image_id, "file_name": name, "width": record.width, "height": record.height}
        )
        for box, label, crowd in zip(record.boxes, record.labels, record.difficult, strict=True):
            bbox = xywh(box)
            doc_annotations.append(
                {
                    "id": len(doc_annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": int(crowd),
                }
            )
    return {
        "images": doc_images,
        "annotations": doc_annotations,
        "categories": coco_categories(part.classes),
    }
