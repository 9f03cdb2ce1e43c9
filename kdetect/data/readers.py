"""Annotation readers: PASCAL VOC, COCO and CSV into one :class:`~kdetect.data.records.Annotations`.

All three formats end up in the same records (the same boxes give the same ``Record``), so the
pipeline, ``kdetect dataset transform`` and evaluation never care where the data came from.

Conventions (see ``docs/datasets.md``):

* Boxes are ``xyxy`` absolute pixels, float32, exactly as written in the source: VOC's
  ``<bndbox>`` values unchanged (VOC's 1-based pixel indices are not shifted; the VOC metric
  applies the devkit's +1 convention itself), COCO ``[x, y, w, h]`` becomes
  ``[x, y, x + w, y + h]``, CSV columns are taken as they are.
* Classes: when a list is given, label id = index in that list and any other class name is an
  error. Otherwise VOC and CSV use the sorted (case-sensitive) set of names found in the split;
  COCO uses its ``categories`` ordered by category id (all of them, used or not).
* A box is invalid when a coordinate is not finite, ``xmax <= xmin`` or ``ymax <= ymin``, or
  it reaches outside ``[0, width] x [0, height]``. ``on_invalid_box`` decides: ``"error"``
  (default) stops with the count and the first offender, ``"clip"`` clips to the image and
  drops what has no area left, ``"drop"`` drops every invalid box.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdetect.data.images import image_size
from kdetect.data.records import Annotations, Record
from kdetect.errors import DataError

logger = logging.getLogger(__name__)

FORMATS = ("voc", "coco", "csv")
ON_INVALID_BOX = ("error", "clip", "drop")
CSV_COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp")


@dataclass
class InvalidBox:
    """One box that failed validation, with where it came from."""

    where: str  # annotation file plus object/line, e.g. "Annotations/a.xml: object 3"
    image: str
    class_name: str
    box: tuple[float, float, float, float]
    reason: str

    def __str__(self) -> str:
        box = ", ".join(f"{v:g}" for v in self.box)
        return f"{self.where} ({self.class_name}) box [{box}] {self.reason}"


@dataclass
class _RawObject:
    class_name: str
    box: tuple[float, float, float, float]
    difficult: bool
    where: str


@dataclass
class _RawImage:
    filename: str
    width: int
    height: int
    where: str
    objects: list[_RawObject] = field(default_factory=list)
    image_id: int | str | None = None


# --------------------------------------------------------------------------------------------
# Public API


def read_annotations(
    format: str,
    path: str | os.PathLike,
    split: str,
    classes: Sequence[str] | str | None = None,
    on_invalid_box: str = "error",
    images_dir: str | os.PathLike | None = None,
    check_images: bool = True,
) -> Annotations:
    """Read one split of a VOC, COCO or CSV dataset.

    Args:
        format: ``"voc"``, ``"coco"`` or ``"csv"``.
        path: the dataset folder, or for COCO/CSV the annotation file itself.
        split: split name (``ImageSets/Main/<split>.txt``, ``instances_<split>.json``,
            ``<split>.csv``).
        classes: class names (list or comma-separated string); index = label id. ``None`` takes
            them from the data (see the module docstring for the order).
        on_invalid_box: ``"error"``, ``"clip"`` or ``"drop"``.
        images_dir: folder holding the images when it is not the format's usual place.
        check_images: stop with ``DataError`` when an image file is missing.

    Raises:
        DataError: naming the file (and object or line) for malformed annotations, a missing
            image, an unknown class, an invalid box under ``"error"`` or an empty split.
    """
    annotations, _ = scan_annotations(
        format, path, split, classes, on_invalid_box, images_dir, check_images
    )
    return annotations


def scan_annotations(
    format: str,
    path: str | os.PathLike,
    split: str,
    classes: Sequence[str] | str | None = None,
    on_invalid_box: str = "error",
    images_dir: str | os.PathLike | None = None,
    check_images: bool = True,
    warn: bool = True,
    limit: int | None = None,
) -> tuple[Annotations, list[InvalidBox]]:
    """Like :func:`read_annotations`, also returning the invalid boxes it found.

    ``warn=False`` skips the log warning about clipped or dropped boxes (for callers that
    report them themselves, like ``kdetect dataset inspect``). ``limit`` keeps only the first
    images of the split (the class list still comes from all of it).
    """
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")
    if on_invalid_box not in ON_INVALID_BOX:
        raise DataError(
            f"unknown on_invalid_box {on_invalid_box!r}; expected one of "
            f"{', '.join(ON_INVALID_BOX)}"
        )
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset path does not exist")
    images_dir = Path(images_dir) if images_dir is not None else None
    if fmt == "voc":
        raw, source_classes = _read_voc(path, split, images_dir)
    elif fmt == "coco":
        raw, source_classes = _read_coco(path, split, images_dir)
    else:
        raw, source_classes = _read_csv(path, split, images_dir)
    if not raw:
        raise DataError(f"{path}: split {split!r} has no images")
    # Classes come from the whole split, so --limit never changes the label ids.
    class_list = _resolve_classes(raw, classes, source_classes)
    if limit is not None:
        raw = raw[: max(int(limit), 1)]
    if check_images:
        _check_images_exist(raw)
    return _build(raw, class_list, on_invalid_box, warn)


def parse_classes(classes: Sequence[str] | str | None) -> list[str] | None:
    """Turn ``"a,b"`` or ``["a", "b"]`` into a checked list of class names."""
    if classes is None:
        return None
    if isinstance(classes, str):
        names = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        names = [str(c).strip() for c in classes]
    if not names:
        raise DataError("the class list is empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"the class list names {', '.join(duplicates)} more than once")
    return names


# --------------------------------------------------------------------------------------------
# Classes, validation and records


def _resolve_classes(
    raw: list[_RawImage], classes: Sequence[str] | str | None, source_classes: list[str] | None
) -> list[str]:
    given = parse_classes(classes)
    if given is None:
        if source_classes is not None:
            return list(source_classes)
        return sorted({obj.class_name for image in raw for obj in image.objects})
    known = set(given)
    for image in raw:
        for obj in image.objects:
            if obj.class_name not in known:
                raise DataError(
                    f"{obj.where}: unknown class {obj.class_name!r} (the class list is "
                    f"{', '.join(given)})"
                )
    return given


def _box_problem(box: tuple[float, ...], width: int, height: int) -> str | None:
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return "has a coordinate that is not a finite number"
    if x2 <= x1:
        return "has xmax <= xmin"
    if y2 <= y1:
        return "has ymax <= ymin"
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        return f"reaches outside the {width}x{height} image"
    return None


def _build(
    raw: list[_RawImage], classes: list[str], on_invalid_box: str, warn: bool = True
) -> tuple[Annotations, list[InvalidBox]]:
    index = {name: i for i, name in enumerate(classes)}
    invalid: list[InvalidBox] = []
    clipped = 0
    records = []
    for image in raw:
        boxes, labels, difficult = [], [], []
        for obj in image.objects:
            box = obj.box
            problem = _box_problem(box, image.width, image.height)
            if problem is not None:
                invalid.append(InvalidBox(obj.where, image.filename, obj.class_name, box, problem))
                if on_invalid_box == "drop" or not all(math.isfinite(v) for v in box):
                    continue
                if on_invalid_box == "clip":
                    x1, y1, x2, y2 = box
                    box = (
                        min(max(x1, 0.0), image.width),
                        min(max(y1, 0.0), image.height),
                        min(max(x2, 0.0), image.width),
                        min(max(y2, 0.0), image.height),
                    )
                    if box[2] <= box[0] or box[3] <= box[1]:
                        continue
                    clipped += 1
            boxes.append(box)
            labels.append(index[obj.class_name])
            difficult.append(obj.difficult)
        records.append(
            Record(
                filename=image.filename,
                width=image.width,
                height=image.height,
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels, dtype=np.int32),
                difficult=np.asarray(difficult, dtype=bool),
                image_id=image.image_id,
            )
        )
    if invalid:
        if on_invalid_box == "error":
            more = f" (and {len(invalid) - 1} more)" if len(invalid) > 1 else ""
            raise DataError(
                f"{len(invalid)} invalid box{'es' if len(invalid) > 1 else ''}: {invalid[0]}"
                f"{more}; use --on-invalid-box clip|drop (on_invalid_box=) to continue"
            )
        dropped = len(invalid) - clipped
        if warn:
            logger.warning(
                "%d invalid box(es) found: %d clipped to the image, %d dropped (first: %s)",
                len(invalid),
                clipped,
                dropped,
                invalid[0],
            )
    return Annotations(classes=list(classes), records=records), invalid


def _check_images_exist(raw: list[_RawImage]) -> None:
    missing = [image for image in raw if not os.path.isfile(image.filename)]
    if missing:
        more = f" (and {len(missing) - 1} more missing images)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0].where}: image {missing[0].filename} not found{more}")


def _find_image(name: str, folders: Iterable[Path], stem_fallback: bool = False) -> str:
    """The first existing ``folder/name`` (or ``folder/stem.ext``); else the first candidate."""
    folders = [f for f in folders if f is not None]
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return str(candidate)
    if stem_fallback:
        stem = Path(name).stem
        for folder in folders:
            for ext in _IMAGE_EXTENSIONS:
                candidate = folder / f"{stem}{ext}"
                if candidate.is_file():
                    return str(candidate)
    return str(folders[0] / name) if folders else name


def _number(text: str | None, what: str, where: str) -> float:
    if text is None or not str(text).strip():
        raise DataError(f"{where}: missing {what}")
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} {str(text).strip()!r} is not a number") from None


def _json_number(info: dict, key: str, where: str, index: int | None = None) -> float:
    """A JSON number (never a string, boolean or null): COCO files hold numbers, not text."""
    value = info.get(key) if index is None else info[key][index]
    name = f"{key!r}" if index is None else f"{key!r}[{index}]"
    if index is None and key not in info:
        raise DataError(f"{where}: missing {name}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _size(width: float, height: float, where: str) -> tuple[int, int]:
    if width != int(width) or height != int(height) or width <= 0 or height <= 0:
        raise DataError(f"{where}: image size {width:g}x{height:g} is not positive whole pixels")
    return int(width), int(height)


# --------------------------------------------------------------------------------------------
# PASCAL VOC


def _voc_root(path: Path) -> Path:
    if (path / "Annotations").is_dir():
        return path
    # Accept VOCdevkit/ (one year inside) as well as VOCdevkit/VOC2007/.
    children = (
        [c for c in sorted(path.iterdir()) if (c / "Annotations").is_dir()] if path.is_dir() else []
    )
    if len(children) == 1:
        return children[0]
    raise DataError(
        f"{path}: not a VOC dataset folder (expected Annotations/, JPEGImages/ and "
        f"ImageSets/Main/<split>.txt)"
    )


def _read_voc(
    path: Path, split: str, images_dir: Path | None
) -> tuple[list[_RawImage], list[str] | None]:
    root = _voc_root(path)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
        hint = f" (available: {', '.join(available)})" if available else ""
        raise DataError(f"{split_file}: split file not found{hint}")
    ids = []
    with open(split_file, encoding="utf-8") as handle:
        for line in handle:
            parts = line.split()
            if parts:
                ids.append(parts[0])
    folders = [images_dir] if images_dir is not None else [root / "JPEGImages"]
    return [_read_voc_xml(root / "Annotations" / f"{i}.xml", i, folders) for i in ids], None


def _read_voc_xml(xml_path: Path, image_id: str, folders: list[Path]) -> _RawImage:
    where = str(xml_path)
    try:
        tree = ET.parse(xml_path)
    except FileNotFoundError:
        raise DataError(f"{where}: annotation file not found") from None
    except ET.ParseError as exc:
        raise DataError(f"{where}: malformed XML ({exc})") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot read annotation ({exc})") from None
    root = tree.getroot()
    if root.tag != "annotation":
        raise DataError(f"{where}: expected an <annotation> root element, found <{root.tag}>")
    name = (root.findtext("filename") or "").strip()
    filename = _find_image(name or f"{image_id}.jpg", folders, stem_fallback=True)
    if name and not os.path.isfile(filename):
        filename = _find_image(f"{image_id}.jpg", folders, stem_fallback=True)
    size = root.find("size")
    width = size.findtext("width") if size is not None else None
    height = size.findtext("height") if size is not None else None
    if width is None or height is None or float(width or 0) <= 0 or float(height or 0) <= 0:
        # Some tools write <size> as 0 or leave it out: the image header is the truth then.
        if not os.path.isfile(filename):
            raise DataError(f"{where}: no <size> and image {filename} not found")
        w, h = image_size(filename)
    else:
        w, h = _size(_number(width, "<width>", where), _number(height, "<height>", where), where)
    image = _RawImage(filename=filename, width=w, height=h, where=where)
    for k, obj in enumerate(root.findall("object"), start=1):
        obj_where = f"{where}: object {k}"
        class_name = (obj.findtext("name") or "").strip()
        if not class_name:
            raise DataError(f"{obj_where}: missing <name>")
        box_el = obj.find("bndbox")
        if box_el is None:
            raise DataError(f"{obj_where} ({class_name}): missing <bndbox>")
        box = tuple(
            _number(box_el.findtext(tag), f"<{tag}>", f"{obj_where} ({class_name})")
            for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        difficult_text = (obj.findtext("difficult") or "0").strip()
        try:
            difficult = bool(int(float(difficult_text)))
        except ValueError:
            raise DataError(f"{obj_where}: <difficult> {difficult_text!r} is not 0 or 1") from None
        image.objects.append(_RawObject(class_name, box, difficult, obj_where))
    return image


# --------------------------------------------------------------------------------------------
# COCO


def _coco_file(path: Path, split: str) -> Path:
    if path.is_file():
        return path
    candidates = [
        path / "annotations" / f"instances_{split}.json",
        path / "coco" / f"instances_{split}.json",
        path / f"instances_{split}.json",
        path / "annotations" / f"{split}.json",
        path / f"{split}.json",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{candidates[0]}: COCO annotation file for split {split!r} not found")


def _read_coco(
    path: Path, split: str, images_dir: Path | None
) -> tuple[list[_RawImage], list[str]]:
    json_path = _coco_file(path, split)
    where = str(json_path)
    try:
        with open(json_path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where}: malformed JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: cannot read annotation file ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{where}: missing or malformed {key!r} list")

    root = path if path.is_dir() else json_path.parent.parent
    if images_dir is not None:
        folders = [images_dir]
    else:
        folders = [
            root / split,
            root / "images" / split,
            root / "images",
            root / "JPEGImages",
            json_path.parent,
            json_path.parent / "images",
            root,
        ]

    try:
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        category_names = {int(c["id"]): str(c["name"]).strip() for c in categories}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: every category needs an integer 'id' and a 'name'") from None
    _refuse_duplicates(where, "category id", [int(c["id"]) for c in categories])
    _refuse_duplicates(where, "category name", [str(c["name"]).strip() for c in categories])
    names_in_order = [category_names[i] for i in sorted(category_names)]

    images: dict[int, _RawImage] = {}
    for k, info in enumerate(data["images"]):
        img_where = f"{where}: images[{k}]"
        if not isinstance(info, dict):
            raise DataError(f"{img_where}: expected a JSON object, got {type(info).__name__}")
        if "id" not in info:
            raise DataError(f"{img_where}: missing 'id'")
        image_id = info["id"]
        img_where = f"{img_where} (id {image_id!r})"
        if not isinstance(info.get("file_name"), str) or not info["file_name"].strip():
            what = "missing" if "file_name" not in info else f"bad {info['file_name']!r} for"
            raise DataError(f"{img_where}: {what} 'file_name' (the image file, a string)")
        w = _json_number(info, "width", img_where)
        h = _json_number(info, "height", img_where)
        if image_id in images:
            ids = [i.get("id") for i in data["images"] if isinstance(i, dict)]
            _refuse_duplicates(where, "image id", ids)
        images[image_id] = _RawImage(
            filename=_find_image(str(info["file_name"]), folders),
            width=_size(w, h, img_where)[0],
            height=_size(w, h, img_where)[1],
            where=f"{where}: image id {image_id}",
            image_id=image_id,
        )
    for k, ann in enumerate(data["annotations"]):
        if isinstance(ann, dict) and "id" in ann:
            ann_where = f"{where}: annotation id {ann['id']!r}"
        else:
            ann_where = f"{where}: annotations[{k}]"
        if not isinstance(ann, dict):
            raise DataError(f"{ann_where}: expected a JSON object, got {type(ann).__name__}")
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise DataError(f"{ann_where}: missing {key!r}")
        image = images.get(ann.get("image_id"))
        if image is None:
            raise DataError(f"{ann_where}: unknown image_id {ann.get('image_id')!r}")
        category = ann["category_id"]
        if isinstance(category, bool) or not isinstance(category, int):
            raise DataError(f"{ann_where}: 'category_id' must be an integer, got {category!r}")
        if category not in category_names:
            raise DataError(f"{ann_where}: unknown category_id {category!r}")
        class_name = category_names[category]
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{ann_where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
        x, y, bw, bh = (_json_number(ann, "bbox", ann_where, i) for i in range(4))
        image.objects.append(
            _RawObject(class_name, (x, y, x + bw, y + bh), bool(ann.get("iscrowd", 0)), ann_where)
        )
    return list(images.values()), names_in_order


# --------------------------------------------------------------------------------------------
# CSV


def _refuse_duplicates(where: str, what: str, values: list) -> None:
    """DataError naming every value of ``values`` that occurs more than once."""
    seen: set = set()
    repeated = [v for v in values if v in seen or seen.add(v)]
    if repeated:
        shown = ", ".join(repr(v) for v in dict.fromkeys(repeated))
        raise DataError(f"{where}: duplicate {what}{'s' if len(set(repeated)) > 1 else ''} {shown}")


def _csv_file(path: Path, split: str) -> Path:
    if path.is_file():
        return path
    candidates = [
        path / f"{split}.csv",
        path / "csv" / f"{split}.csv",
        path / "annotations" / f"{split}.csv",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{candidates[0]}: CSV file for split {split!r} not found")


def _read_csv(path: Path, split: str, images_dir: Path | None) -> tuple[list[_RawImage], None]:
    csv_path = _csv_file(path, split)
    root = path if path.is_dir() else csv_path.parent
    if images_dir is not None:
        folders = [images_dir]
    else:
        folders = [
            csv_path.parent,
            csv_path.parent / "images",
            root,
            root / "images",
            root / "JPEGImages",
            csv_path.parent.parent / "JPEGImages",
            csv_path.parent.parent / "images",
        ]
    images: dict[str, _RawImage] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{csv_path}: empty CSV file (a header row is required)")
            header = [h.strip().lower() for h in header]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{csv_path}:1: header must name {','.join(CSV_COLUMNS)} "
                    f"(missing {', '.join(missing)})"
                )
            col = {name: header.index(name) for name in CSV_COLUMNS}
            for row in reader:
                line = f"{csv_path}:{reader.line_num}"
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{line}: expected {len(header)} fields, found {len(row)}")
                cell = {name: row[i].strip() for name, i in col.items()}
                if not cell["filename"]:
                    raise DataError(f"{line}: empty filename")
                w, h = _size(
                    _number(cell["width"], "width", line),
                    _number(cell["height"], "height", line),
                    line,
                )
                image = images.get(cell["filename"])
                if image is None:
                    image = images[cell["filename"]] = _RawImage(
                        filename=_find_image(cell["filename"], folders),
                        width=w,
                        height=h,
                        where=line,
                    )
                elif (image.width, image.height) != (w, h):
                    raise DataError(
                        f"{line}: {cell['filename']} is {w}x{h} here but "
                        f"{image.width}x{image.height} on an earlier line"
                    )
                coords = [cell[c] for c in ("xmin", "ymin", "xmax", "ymax")]
                if not cell["class"] and not any(coords):
                    continue  # a row with no box: an image without objects
                if not cell["class"]:
                    raise DataError(f"{line}: empty class")
                box = tuple(
                    _number(v, n, line) for v, n in zip(coords, CSV_COLUMNS[4:], strict=True)
                )
                image.objects.append(_RawObject(cell["class"], box, False, line))
    except csv.Error as exc:
        raise DataError(f"{csv_path}: malformed CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not UTF-8 text ({exc})") from None
    return list(images.values()), None
