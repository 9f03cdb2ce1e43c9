"""Label Studio: ``<split>.json`` (a task list to import) and the images in ``images/<split>/``.

Each task's ``data.image`` is ``/data/local-files/?d=images/<split>/<file>``: served by Label
Studio's local storage with the output folder as its document root
(``LOCAL_FILES_DOCUMENT_ROOT``), and found again by the reader beside the JSON. The boxes are
one annotation of ``rectanglelabels`` regions (:func:`kdetect.data.labelstudio.region_from_box`).
The difficult flag is lost.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from kdetect.data.labelstudio import region_from_box
from kdetect.data.records import Annotations, Record
from kdetect.data.writers.common import ImageFiles, class_name


def write_labelstudio(parts: dict[str, Annotations], root: Path, images: ImageFiles) -> None:
    """One task list per split."""
    for split, part in parts.items():
        tasks = []
        for k, record in enumerate(part.records, start=1):
            relative = images.place(record, f"images/{split}")
            regions = regions_of(record, part.classes)
            annotation = {"id": k, "result": regions, "was_cancelled": False}
            tasks.append({"id": k, "data": {"image": local_files_url(relative)},
                          "annotations": [annotation]})  # fmt: skip
        path = root / f"{split}.json"
        path.write_text(json.dumps(tasks, indent=1), encoding="utf-8")


def local_files_url(relative: str) -> str:
    """The local-storage URL of a file relative to the document root."""
    return f"/data/local-files/?d={quote(str(relative))}"


def regions_of(record: Record, classes: list[str], scores=None) -> list[dict]:
    """The ``rectanglelabels`` regions of a record's boxes (with ``score`` when given)."""
    regions = []
    for k, (box, label) in enumerate(zip(record.boxes, record.labels, strict=True)):
        score = None if scores is None else float(scores[k])
        region = region_from_box(
            box, class_name(classes, label), record.width, record.height, score=score
        )
        regions.append({"id": f"r{k + 1}", **region})
    return regions
