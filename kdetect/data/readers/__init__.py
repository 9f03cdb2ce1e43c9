"""Annotation readers: VOC, COCO, CSV, YOLO and Label Studio into one
:class:`~kdetect.data.records.Annotations`.

All formats end up in the same records (the same boxes give the same ``Record``), so the
pipeline, ``kdetect dataset transform`` and evaluation never care where the data came from.
One module per format (``voc``, ``coco``, ``csv``, ``yolo``, ``labelstudio``); what they share
is in ``common``. ``kdetect.data.writers`` writes the same records back in each format.

Conventions (see ``docs/datasets.md``):

* Boxes are ``xyxy`` absolute pixels, float32, exactly as written in the source: VOC's
  ``<bndbox>`` values unchanged (VOC's 1-based pixel indices are not shifted; the VOC metric
  applies the devkit's +1 convention itself), COCO ``[x, y, w, h]`` becomes
  ``[x, y, x + w, y + h]``, CSV columns are taken as they are, YOLO's normalised
  ``cx cy w h`` and Label Studio's percentages are multiplied out by the image size.
* Classes: when a list is given, label id = index in that list and any other class name is an
  error. Otherwise VOC, CSV and Label Studio use the sorted (case-sensitive) set of names found
  in the split; COCO uses its ``categories`` ordered by category id (all of them, used or not),
  YOLO the ``names`` of its ``data.yaml``.
* A box is invalid when a coordinate is not finite, ``xmax <= xmin`` or ``ymax <= ymin``, or
  it reaches outside ``[0, width] x [0, height]``. ``on_invalid_box`` decides: ``"error"``
  (default) stops with the count and the first offender, ``"clip"`` clips to the image and
  drops what has no area left, ``"drop"`` drops every invalid box.

Adding a format (say ``kitti``):

1. Write ``readers/kitti.py`` with one function
   ``read_kitti(path: Path, split: str, images_dir: Path | None)
   -> tuple[list[RawImage], list[str] | None]``: every image of the split as a
   :class:`~kdetect.data.readers.common.RawImage` holding
   :class:`~kdetect.data.readers.common.RawObject` s (class name, ``xyxy`` pixel box, difficult
   flag, and ``where``: the file plus line, object or key, used in every message), and the
   format's own class list in label order, or ``None`` to number the sorted names found.
2. Raise :class:`~kdetect.plumbing.errors.DataError` only, one line starting with ``where`` (the
helpers in ``common`` do: ``number``, ``json_number``, ``image_pixels``, ``find_annotation_file``,
   ``read_json_file``, ``read_text_file``, ``refuse_duplicates``). Leave boxes unchecked and
   image files unopened unless the format needs a size from the image: validation, classes
   and the missing-image check happen after the reader, the same for every format.
3. Register it below with ``register_format("kitti", kitti.read_kitti)``; the registration order
   is the order ``FORMATS`` lists (in messages and ``--type``). When the images may sit outside
   the folder given (or the annotation file's folder), pass a third argument giving the
   dataset's folders: ``kdetect dataset convert`` refuses images outside them. A writer for
   ``kdetect dataset convert --to`` goes in ``kdetect/data/writers/`` (see that package's
   docstring).
"""

import os
from pathlib import Path

from kdetect.data.readers import coco, csv, labelstudio, voc, yolo
from kdetect.data.readers.common import (
    ON_INVALID_BOX,
    READERS,
    InvalidBox,
    parse_classes,
    read_annotations,
    register_format,
    scan_annotations,
)
from kdetect.data.readers.csv import CSV_COLUMNS
from kdetect.models.outputs import fallback_class_names

register_format("voc", voc.read_voc)
register_format("coco", coco.read_coco, coco.dataset_roots)
register_format("csv", csv.read_csv, csv.dataset_roots)
register_format("yolo", yolo.read_yolo)
register_format("labelstudio", labelstudio.read_labelstudio)

FORMATS = tuple(READERS)


def source_folders(format: str, images: list) -> set[Path]:
    """The folders a dataset's images (and YOLO's label files) are read from: an output inside
    one would be read back as part of the dataset (``dataset convert``, ``inspect --output``)."""
    folders = {Path(image).parent for image in images}
    if format == "yolo":
        folders |= {yolo.label_path(Path(image)).parent for image in images}
    return folders


def find_splits(format: str, source: str | os.PathLike) -> list[str]:
    """The splits a dataset holds, where its reader looks for them: VOC's
    ``ImageSets/Main/<split>.txt``; the ``<split>`` of COCO's ``instances_<split>.json``
    (else ``<split>.json``), CSV's ``<split>.csv`` and Label Studio's ``<split>.json``, in the
    first of the reader's folders that holds any; the split keys of YOLO's ``data.yaml``. An
    annotation file given by itself is the one split ``train``, as is a folder where none is
    found (reading it then says what is missing)."""
    path = Path(source)
    if format == "yolo":
        return yolo.given_splits(yolo.read_data_yaml(yolo.find_data_yaml(path))) or ["train"]
    if path.is_file():
        return ["train"]
    patterns = {
        "voc": [("ImageSets/Main", "*.txt", "")],
        "coco": [
            ("annotations", "instances_*.json", "instances_"),
            ("coco", "instances_*.json", "instances_"),
            (".", "instances_*.json", "instances_"),
            ("annotations", "*.json", ""),
            (".", "*.json", ""),
        ],
        "csv": [(".", "*.csv", ""), ("csv", "*.csv", ""), ("annotations", "*.csv", "")],
        "labelstudio": [(".", "*.json", ""), ("labelstudio", "*.json", "")],
    }
    for folder, pattern, prefix in patterns.get(format, []):
        found = sorted(p.stem.removeprefix(prefix) for p in (path / folder).glob(pattern))
        if found:
            return found
    return ["train"]


__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "ON_INVALID_BOX",
    "InvalidBox",
    "fallback_class_names",
    "find_splits",
    "parse_classes",
    "read_annotations",
    "register_format",
    "scan_annotations",
    "source_folders",
]
