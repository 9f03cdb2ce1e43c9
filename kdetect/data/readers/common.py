"""What every annotation reader shares: raw objects, the format registry, class lists, box checks.

A format module turns its files into :class:`RawImage` / :class:`RawObject` (names and boxes as
written, each with a ``where`` naming the file and object, line or key). :func:`scan_annotations`
picks the reader registered for the format, then does the rest the same way for every format:
the class list, the image check, box validation under ``on_invalid_box`` and the records.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdetect.data.records import Annotations, Record
from kdetect.plumbing.errors import DataError
from kdetect.plumbing.parsing import read_text

logger = logging.getLogger(__name__)

ON_INVALID_BOX = ("error", "clip", "drop")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp")


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
class RawObject:
    """One object as the source wrote it: class name, ``xyxy`` box, difficult flag, location."""

    class_name: str
    box: tuple[float, float, float, float]
    difficult: bool
    where: str


@dataclass
class RawImage:
    """One image as the source wrote it, before classes are numbered and boxes checked."""

    filename: str
    width: int
    height: int
    where: str
    objects: list[RawObject] = field(default_factory=list)
    image_id: int | str | None = None


# A reader: (dataset path, split, images folder or None) -> (images, the source's own class list
# in label order, or None to number the sorted names found).
Reader = Callable[[Path, str, Path | None], tuple[list[RawImage], list[str] | None]]
READERS: dict[str, Reader] = {}
# The folders a dataset's images may be in, from the path given (folder or annotation file).
Roots = Callable[[Path], list[Path]]
ROOTS: dict[str, Roots] = {}


def dataset_folder(path: Path) -> list[Path]:
    """The default roots: the dataset folder given, or the folder of the annotation file."""
    return [path if path.is_dir() else path.parent]


def register_format(name: str, reader: Reader, roots: Roots = dataset_folder) -> None:
    """Make ``reader`` the one :func:`scan_annotations` uses for ``format=name``; ``roots``
    gives the folders its images must be in unless outside images are allowed."""
    if name in READERS:
        raise ValueError(f"dataset format {name!r} is registered twice")
    READERS[name] = reader
    ROOTS[name] = roots


# --------------------------------------------------------------------------------------------
# Reading a split


def read_annotations(
    format: str,
    path: str | os.PathLike,
    split: str,
    classes: Sequence[str] | str | None = None,
    on_invalid_box: str = "error",
    images_dir: str | os.PathLike | None = None,
    check_images: bool = True,
    allow_outside_root: bool = True,
) -> Annotations:
    """Read one split of a dataset: :func:`scan_annotations` (same arguments and errors) without
    the list of invalid boxes."""
    return scan_annotations(
        format, path, split, classes, on_invalid_box, images_dir, check_images,
        allow_outside_root=allow_outside_root,
    )[0]  # fmt: skip


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
    allow_outside_root: bool = True,
) -> tuple[Annotations, list[InvalidBox]]:
    """Read one split of a registered dataset format, also returning the invalid boxes found.

    Args:
        format: a registered format (``"voc"``, ``"coco"``, ``"csv"``).
        path: the dataset folder, or for COCO/CSV the annotation file itself.
        split: split name (``ImageSets/Main/<split>.txt``, ``instances_<split>.json``,
            ``<split>.csv``).
        classes: class names (list or comma-separated string); index = label id. ``None`` takes
            them from the data (see the package docstring for the order).
        on_invalid_box: ``"error"``, ``"clip"`` or ``"drop"``.
        images_dir: folder holding the images when it is not the format's usual place.
        check_images: stop with ``DataError`` when an image file is missing.
        warn: ``False`` skips the log warning about clipped or dropped boxes (for callers that
            report them themselves, like ``kdetect dataset inspect``).
        limit: keep only the first images of the split (the class list still comes from all).
        allow_outside_root: ``False`` refuses an image outside the dataset's folders (the
            folder given or of the annotation file, and ``images_dir``): ``..`` or absolute
            paths in the annotations, e.g. a Label Studio task naming ``/etc/passwd``.

    Raises:
        DataError: naming the file (and object or line) for malformed annotations, a missing
            image, an unknown class, an invalid box under ``"error"`` or an empty split.
    """
    fmt = str(format).lower()
    if fmt not in READERS:
        raise DataError(f"unknown dataset format {format!r}; expected one of {', '.join(READERS)}")
    if on_invalid_box not in ON_INVALID_BOX:
        raise DataError(
            f"unknown on_invalid_box {on_invalid_box!r}; expected one of "
            f"{', '.join(ON_INVALID_BOX)}"
        )
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset path does not exist")
    images_dir = Path(images_dir) if images_dir is not None else None
    raw, source_classes = READERS[fmt](path, split, images_dir)
    if not raw:
        raise DataError(f"{path}: split {split!r} has no images")
    # Classes come from the whole split, so --limit never changes the label ids.
    class_list = resolve_classes(raw, classes, source_classes)
    if limit is not None:
        raw = raw[: max(int(limit), 1)]
    if not allow_outside_root:
        roots = ROOTS[fmt](path) + ([images_dir] if images_dir is not None else [])
        check_inside(raw, roots)
    if check_images:
        check_images_exist(raw)
    return build_annotations(raw, class_list, on_invalid_box, warn)


# --------------------------------------------------------------------------------------------
# Classes


#: Suffixes that make a ``--classes`` value a file name, even when the file is missing.
CLASS_FILE_SUFFIXES = (".json", ".txt", ".names")


def parse_classes(classes: Sequence[str] | str | os.PathLike | None) -> list[str] | None:
    """A checked list of class names from ``["a", "b"]``, ``"a,b"``, or a file: ``classes.json``
    (a list, or ``{"classes": [...]}``) or text with one name per line. A string is a file
    when it names one, or ends in ``.json``, ``.txt`` or ``.names``."""
    if classes is None:
        return None
    if isinstance(classes, os.PathLike) or (
        isinstance(classes, str)
        and (os.path.isfile(classes) or classes.lower().endswith(CLASS_FILE_SUFFIXES))
    ):
        names = _class_file(Path(classes))
    elif isinstance(classes, str):
        names = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        names = [str(c).strip() for c in classes]
    if not names:
        raise DataError("the class list is empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"the class list names {', '.join(duplicates)} more than once")
    return names


def _class_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"classes: file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() != ".json":
            return [line.strip() for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"classes: cannot read {path} ({exc})") from None
    names = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f'--classes: {path}: expected a list of names or {{"classes": [...]}}')
    return names


def resolve_classes(
    raw: list[RawImage], classes: Sequence[str] | str | None, source_classes: list[str] | None
) -> list[str]:
    """The class list: the given one (every name found must be in it), else the source's own,
    else the sorted (case-sensitive) set of names found."""
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


# --------------------------------------------------------------------------------------------
# Boxes and records


def box_problem(box: tuple[float, ...], width: int, height: int) -> str | None:
    """Why ``box`` is invalid in a ``width x height`` image, or ``None`` when it is valid."""
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


def _clip_box(box: tuple[float, ...], width: int, height: int) -> tuple[float, ...] | None:
    """``box`` clipped into the image, or ``None`` when no area is left."""
    x1, y1, x2, y2 = (min(max(v, 0.0), limit) for v, limit in zip(box, (width, height) * 2))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def build_annotations(
    raw: list[RawImage], classes: list[str], on_invalid_box: str, warn: bool = True
) -> tuple[Annotations, list[InvalidBox]]:
    """Number the classes and check every box: ``error`` raises on the first invalid one (with
    the count), ``clip`` clips into the image and drops what has no area, ``drop`` drops it."""
    index = {name: i for i, name in enumerate(classes)}
    invalid: list[InvalidBox] = []
    clipped = 0
    records = []
    for image in raw:
        boxes, labels, difficult = [], [], []
        for obj in image.objects:
            box = obj.box
            problem = box_problem(box, image.width, image.height)
            if problem is not None:
                invalid.append(InvalidBox(obj.where, image.filename, obj.class_name, box, problem))
                if on_invalid_box == "drop" or not all(math.isfinite(v) for v in box):
                    continue
                if on_invalid_box == "clip":
                    box = _clip_box(box, image.width, image.height)
                    if box is None:
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
        _report_invalid(invalid, clipped, on_invalid_box, warn)
    return Annotations(classes=list(classes), records=records), invalid


def _report_invalid(invalid: list[InvalidBox], clipped: int, on_invalid_box: str, warn: bool):
    if on_invalid_box == "error":
        more = f" (and {len(invalid) - 1} more)" if len(invalid) > 1 else ""
        raise DataError(
            f"{len(invalid)} invalid box{'es' if len(invalid) > 1 else ''}: {invalid[0]}"
            f"{more}; use --on-invalid-box clip|drop (on_invalid_box=) to continue"
        )
    if warn:
        logger.warning(
            "%d invalid box(es) found: %d clipped to the image, %d dropped (first: %s)",
            len(invalid),
            clipped,
            len(invalid) - clipped,
            invalid[0],
        )


def check_images_exist(raw: list[RawImage]) -> None:
    """DataError naming the first image file that does not exist (and how many more)."""
    missing = [image for image in raw if not os.path.isfile(image.filename)]
    if missing:
        more = f" (and {len(missing) - 1} more missing images)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0].where}: image {missing[0].filename} not found{more}")


def _inside(filename: str, folder: Path) -> bool:
    """Whether ``filename`` is under ``folder``, by its absolute path with ``..`` resolved
    (links inside the folder are followed as they are: datasets often link their images)."""
    file = os.path.normpath(os.path.abspath(filename))
    root = os.path.normpath(os.path.abspath(folder))
    return os.path.commonpath([file, root]) == root


def check_inside(raw: list[RawImage], roots: list[Path]) -> None:
    """DataError naming the first image that is under none of ``roots``."""
    for image in raw:
        if not any(_inside(image.filename, root) for root in roots):
            shown = ", ".join(dict.fromkeys(os.path.normpath(os.path.abspath(r)) for r in roots))
            folders = "folders" if ", " in shown else "folder"
            raise DataError(
                f"{image.where}: image {image.filename} is outside the dataset {folders} "
                f"{shown}; use --allow-outside-root (allow_outside_root=True) to read it"
            )


# --------------------------------------------------------------------------------------------
# Finding files


def find_annotation_file(path: Path, candidates: list[Path], what: str) -> Path:
    """``path`` when it is a file, else the first existing candidate; else a DataError naming the
    first candidate and ``what`` (e.g. "CSV file for split 'val'")."""
    if path.is_file():
        return path
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{candidates[0]}: {what} not found")


def find_image(name: str, folders: Iterable[Path | None], stem_fallback: bool = False) -> str:
    """The first existing ``folder/name`` (or ``folder/stem.ext``); else the first candidate."""
    folders = [f for f in folders if f is not None]
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return str(candidate)
    if stem_fallback:
        stem = Path(name).stem
        for folder in folders:
            for ext in IMAGE_EXTENSIONS:
                candidate = folder / f"{stem}{ext}"
                if candidate.is_file():
                    return str(candidate)
    return str(folders[0] / name) if folders else name


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of a dataset file (:func:`kdetect.plumbing.parsing.read_text`), errors as
    :class:`DataError`."""
    return read_text(path, what, DataError)


def read_json_file(path: Path) -> Any:
    """The parsed JSON of ``path``; DataError with the line and column when it is malformed."""
    text = read_text_file(path, "annotation file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None


# --------------------------------------------------------------------------------------------
# Values, with errors naming where they stand


def number(text: str | None, what: str, where: str) -> float:
    """``text`` as a float; DataError ``"<where>: missing <what>"`` or ``"... is not a number"``."""
    if text is None or not str(text).strip():
        raise DataError(f"{where}: missing {what}")
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} {str(text).strip()!r} is not a number") from None


def json_number(info: dict, key: str, where: str, index: int | None = None) -> float:
    """A JSON number (never a string, boolean or null): COCO files hold numbers, not text."""
    value = info.get(key) if index is None else info[key][index]
    name = f"{key!r}" if index is None else f"{key!r}[{index}]"
    if index is None and key not in info:
        raise DataError(f"{where}: missing {name}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def float32_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """``box`` rounded to float32 (as a record holds it): for boxes computed from normalised or
    percent values, whose last float64 digits are rounding noise."""
    return tuple(float(v) for v in np.asarray(box, dtype=np.float64).astype(np.float32))


def image_pixels(width: float, height: float, where: str) -> tuple[int, int]:
    """``(width, height)`` as whole positive pixels, else a DataError."""
    finite = math.isfinite(width) and math.isfinite(height)
    if not finite or width != int(width) or height != int(height) or width <= 0 or height <= 0:
        raise DataError(f"{where}: image size {width:g}x{height:g} is not positive whole pixels")
    return int(width), int(height)


def refuse_duplicates(where: str, what: str, values: list) -> None:
    """DataError naming every value of ``values`` that occurs more than once."""
    seen: set = set()
    repeated = [v for v in values if v in seen or seen.add(v)]
    if repeated:
        shown = ", ".join(repr(v) for v in dict.fromkeys(repeated))
        raise DataError(f"{where}: duplicate {what}{'s' if len(set(repeated)) > 1 else ''} {shown}")
