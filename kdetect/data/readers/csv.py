"""CSV: one ``<split>.csv`` with a header and one row per box.

The header names ``filename,width,height,class,xmin,ymin,xmax,ymax`` (any order, extra columns
allowed); coordinates are taken as they are. A row with an empty class and no coordinates is an
image without objects. CSV has no difficult flag; the class list comes from the names found.
"""

from __future__ import annotations

import csv
from pathlib import Path

from kdetect.data.readers.common import (
    RawImage,
    RawObject,
    find_annotation_file,
    find_image,
    image_pixels,
    number,
)
from kdetect.plumbing.errors import DataError

CSV_COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")


def read_csv(path: Path, split: str, images_dir: Path | None) -> tuple[list[RawImage], None]:
    """The images of ``split`` (the class list comes from the names found)."""
    csv_path = find_annotation_file(
        path,
        [
            path / f"{split}.csv",
            path / "csv" / f"{split}.csv",
            path / "annotations" / f"{split}.csv",
        ],
        f"CSV file for split {split!r}",
    )
    root = path if path.is_dir() else csv_path.parent
    folders = [images_dir] if images_dir is not None else _image_folders(root, csv_path)
    images: dict[str, RawImage] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            columns = _columns(next(reader, None), csv_path)
            for row in reader:
                _add_row(row, columns, f"{csv_path}:{reader.line_num}", images, folders)
    except csv.Error as exc:
        raise DataError(f"{csv_path}: malformed CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not UTF-8 text ({exc})") from None
    return list(images.values()), None


def dataset_roots(path: Path) -> list[Path]:
    """The dataset folder given, or every folder the images of the CSV file ``path`` are
    looked up in."""
    return [path] if path.is_dir() else _image_folders(path.parent, path)


def _image_folders(root: Path, csv_path: Path) -> list[Path]:
    return [
        csv_path.parent,
        csv_path.parent / "images",
        root,
        root / "images",
        root / "JPEGImages",
        csv_path.parent.parent / "JPEGImages",
        csv_path.parent.parent / "images",
    ]


def _columns(header: list[str] | None, csv_path: Path) -> tuple[int, dict[str, int]]:
    """(number of fields, column name -> index) from the header row."""
    if header is None:
        raise DataError(f"{csv_path}: empty CSV file (a header row is required)")
    header = [h.strip().lower() for h in header]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{csv_path}:1: header must name {','.join(CSV_COLUMNS)} (missing {', '.join(missing)})"
        )
    return len(header), {name: header.index(name) for name in CSV_COLUMNS}


def _add_row(
    row: list[str],
    columns: tuple[int, dict[str, int]],
    line: str,
    images: dict[str, RawImage],
    folders: list[Path],
) -> None:
    """Add one row's image (first time its file is named) and box; blank rows are skipped."""
    fields, col = columns
    if not row or all(not cell.strip() for cell in row):
        return
    if len(row) != fields:
        raise DataError(f"{line}: expected {fields} fields, found {len(row)}")
    cell = {name: row[i].strip() for name, i in col.items()}
    if not cell["filename"]:
        raise DataError(f"{line}: empty filename")
    w, h = image_pixels(
        number(cell["width"], "width", line), number(cell["height"], "height", line), line
    )
    image = images.get(cell["filename"])
    if image is None:
        image = images[cell["filename"]] = RawImage(
            filename=find_image(cell["filename"], folders), width=w, height=h, where=line
        )
    elif (image.width, image.height) != (w, h):
        raise DataError(
            f"{line}: {cell['filename']} is {w}x{h} here but "
            f"{image.width}x{image.height} on an earlier line"
        )
    coords = [cell[c] for c in ("xmin", "ymin", "xmax", "ymax")]
    if not cell["class"] and not any(coords):
        return  # a row with no box: an image without objects
    if not cell["class"]:
        raise DataError(f"{line}: empty class")
    box = tuple(number(v, n, line) for v, n in zip(coords, CSV_COLUMNS[4:], strict=True))
    image.objects.append(RawObject(cell["class"], box, False, line))
