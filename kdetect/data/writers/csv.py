"""CSV: ``<split>.csv`` (``filename,width,height,class,xmin,ymin,xmax,ymax``), images in
``images/``.

One row per box, a row with an empty class for an image without boxes. CSV has no difficult
flag (it is lost) and no class list: ``classes.txt`` lists the classes in label order.
"""

from __future__ import annotations

import csv
from pathlib import Path

from kdetect.data.readers import CSV_COLUMNS
from kdetect.data.records import Annotations
from kdetect.data.writers.common import ImageFiles, class_name, text_number


def write_csv(parts: dict[str, Annotations], root: Path, images: ImageFiles) -> None:
    """One CSV per split."""
    for split, part in parts.items():
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for record in part.records:
                name = Path(images.place(record, "images")).name
                size = [name, record.width, record.height]
                if not len(record.labels):
                    writer.writerow(size + [""] * 5)
                for box, label in zip(record.boxes, record.labels, strict=True):
                    name_ = class_name(part.classes, label)
                    writer.writerow(size + [name_] + [text_number(v) for v in box])
    classes = next(iter(parts.values())).classes
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
