"""Annotation writers: :class:`~kdetect.data.records.Annotations` back into VOC, COCO, CSV, YOLO
and Label Studio, and :func:`convert_dataset` (``kdetect dataset convert``).

One module per format, each with one function ``write_<format>(parts, root, images)``: ``parts``
maps split names to their records (one class list for all), ``root`` is the (temporary) output
folder and ``images`` (:class:`~kdetect.data.writers.common.ImageFiles`) copies or links each
image into the format's layout, refusing two sources for one output file. What a format cannot
hold is lost and said in its module (VOC keeps everything; CSV, YOLO and Label Studio drop the
difficult flag). A writer's per-image function (``voc_xml``, ``label_lines``, ``regions_of``,
``coco_document``) is also what ``kdetect predict --format`` writes.

:func:`convert_dataset` reads every split first and verifies every image as training does
(:func:`kdetect.data.images.verify_images`: decoded, within the size limits, all bad files named
at once), refusing images outside the dataset's folders unless asked (``allow_outside_root``), so
any error stops before a file is written; it writes into a temporary folder beside the output and
renames it into place at the end (:func:`kdetect.plumbing.paths.atomic_path`), so a failure leaves
nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from kdetect.data.images import verify_images
from kdetect.data.readers import find_splits, read_annotations, source_folders
from kdetect.data.records import Annotations
from kdetect.data.writers.coco import write_coco
from kdetect.data.writers.common import ImageFiles, merge_classes
from kdetect.data.writers.csv import write_csv
from kdetect.data.writers.labelstudio import write_labelstudio
from kdetect.data.writers.voc import write_voc
from kdetect.data.writers.yolo import write_yolo
from kdetect.plumbing.errors import DataError
from kdetect.plumbing.paths import atomic_path, check_free, check_kind, check_not_input

Writer = Callable[[dict[str, Annotations], Path, ImageFiles], None]
WRITERS: dict[str, Writer] = {
    "voc": write_voc,
    "coco": write_coco,
    "csv": write_csv,
    "yolo": write_yolo,
    "labelstudio": write_labelstudio,
}


def write_dataset(
    format: str,
    parts: dict[str, Annotations],
    output: str | os.PathLike,
    link: bool = False,
) -> Path:
    """Write ``parts`` (split -> records) as ``format`` into ``output``, atomically."""
    if format not in WRITERS:
        raise DataError(f"unknown output format {format!r}; expected one of {', '.join(WRITERS)}")
    if not parts:
        raise DataError("no split to write")
    parts = merge_classes(parts)
    with atomic_path(output) as tmp:
        tmp.mkdir()
        WRITERS[format](parts, tmp, ImageFiles(tmp, link))
    return Path(output)


def convert_dataset(
    source_format: str,
    source: str | os.PathLike,
    splits: Sequence[str] | None,
    format: str,
    output: str | os.PathLike,
    *,
    classes: Sequence[str] | str | None = None,
    on_invalid_box: str = "error",
    images_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    link: bool = False,
    allow_outside_root: bool = False,
) -> dict[str, Annotations]:
    """Read ``splits`` of a dataset (``None``: every split it holds, :func:`find_splits`) and
    write them as ``format`` into the folder ``output``.

    Refuses (before reading) an output that is, holds or is inside the source (its folder, a
    file source's folder, ``images_dir``) or inside a run; (while reading) an image outside the
    dataset's folders unless ``allow_outside_root``; (after reading) an output that holds an
    image of the source or is inside a folder its images or labels come from, an image that
    training would refuse (corrupt, truncated, outside the size limits), and then an existing
    non-empty output unless ``overwrite``. Returns what was written, split by split.
    """
    if format not in WRITERS:
        raise DataError(f"unknown output format {format!r}; expected one of {', '.join(WRITERS)}")
    root = Path(source) if Path(source).is_dir() else Path(source).parent
    check_not_input(output, [source, images_dir], replaces=True, whole=[root, images_dir])
    check_kind(output, "folder")
    parts = {
        split: read_annotations(
            source_format, source, split, classes, on_invalid_box, images_dir,
            allow_outside_root=allow_outside_root,
        )
        for split in dict.fromkeys(splits or find_splits(source_format, source))
    }  # fmt: skip
    images = [r.filename for part in parts.values() for r in part.records]
    # e.g. --output over the image folder, or inside one named by an absolute path
    check_not_input(output, images, replaces=True, whole=source_folders(source_format, images))
    verify_images(images)
    check_free(output, overwrite)  # only now: an input is never offered to --overwrite
    parts = merge_classes(parts)
    write_dataset(format, parts, output, link=link)
    return parts
