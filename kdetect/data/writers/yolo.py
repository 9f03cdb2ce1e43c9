"""YOLO (Ultralytics layout): ``data.yaml``, ``images/<split>/`` and ``labels/<split>/*.txt``.

``data.yaml`` lists the split folders relative to itself and ``names`` as ``{id: name}`` in
label order. Each box is a line ``class cx cy w h`` normalised by the image size (10 decimals);
an image without boxes gets an empty label file. YOLO has no difficult flag (it is lost).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kdetect.data.records import Annotations, Record
from kdetect.data.writers.common import ImageFiles, normalised


def write_yolo(parts: dict[str, Annotations], root: Path, images: ImageFiles) -> None:
    """Images, one label file per image, and ``data.yaml``."""
    for split, part in parts.items():
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for record in part.records:
            name = Path(images.place(record, f"images/{split}")).name
            label = f"labels/{split}/{Path(name).stem}.txt"
            images.claim(label, record.filename)
            (root / label).write_text("".join(label_lines(record)), encoding="utf-8")
    classes = next(iter(parts.values())).classes
    write_data_yaml(root, classes, {split: f"images/{split}" for split in parts})


def write_data_yaml(root: Path, classes: list[str], splits: dict[str, str]) -> None:
    """``data.yaml`` with the split folders (relative to it) and ``names``."""
    data = {**splits, "nc": len(classes), "names": dict(enumerate(classes))}
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    (root / "data.yaml").write_text(text, encoding="utf-8")


def label_lines(record: Record, scores=None) -> list[str]:
    """``class cx cy w h`` lines of a record (with a 6th column, the score, when given)."""
    lines = []
    for k, (box, label) in enumerate(zip(record.boxes, record.labels, strict=True)):
        x1, y1, x2, y2 = (float(v) for v in box)
        values = (
            (x1 + x2) / 2 / record.width,
            (y1 + y2) / 2 / record.height,
            (x2 - x1) / record.width,
            (y2 - y1) / record.height,
        )
        fields = [str(int(label))] + [normalised(v) for v in values]
        if scores is not None:
            fields.append(f"{float(scores[k]):.6g}")
        lines.append(" ".join(fields) + "\n")
    return lines
