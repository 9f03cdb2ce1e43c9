"""YOLO (Ultralytics layout): ``data.yaml``, ``images/<split>/`` and ``labels/<split>/*.txt``.

``data.yaml`` names the classes (``names``: a list, or a ``{id: name}`` mapping with ids
``0..n-1``) and each split's images (``train: images/train``; a folder, a ``.txt`` list of image
paths, or a list of either), relative to ``path:`` when given (itself relative to the yaml's
folder) or else to the yaml's folder. The label file of ``.../images/<rest>/x.jpg`` is
``.../labels/<rest>/x.txt`` (the last ``images`` folder becomes ``labels``; without one, the
file sits beside the image). Each line is ``class cx cy w h``, normalised to ``[0, 1]``; an image
without a label file (or with an empty one) has no objects. The pixel size comes from the image
header, which denormalises the box: ``xmin = (cx - w / 2) * width`` and so on (rounded to
float32, as records hold it, so 64.0000000001 from a rounded ``cx`` is 64 again).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from kdetect.data.images import image_size
from kdetect.data.readers.common import (
    IMAGE_EXTENSIONS,
    RawImage,
    RawObject,
    float32_box,
    number,
    read_text_file,
)
from kdetect.plumbing.errors import DataError
from kdetect.plumbing.parsing import load_yaml

YAML_NAMES = ("data.yaml", "dataset.yaml")


def read_yolo(path: Path, split: str, images_dir: Path | None) -> tuple[list[RawImage], list[str]]:
    """The images of ``split`` and the ``names`` of ``data.yaml`` in id order.

    With ``images_dir`` the images are taken from that folder and the labels still from the
    split's ``labels`` folder.
    """
    yaml_path = find_data_yaml(path)
    data = read_data_yaml(yaml_path)
    names = class_names(data, yaml_path)
    base = yaml_path.parent
    if data.get("path"):
        base = base / str(data["path"])
    if data.get(split) in (None, "", []):
        splits = given_splits(data)
        raise DataError(
            f"{yaml_path}: no {split!r} key (the splits given are {', '.join(splits) or 'none'})"
        )
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    images: list[RawImage] = []
    for entry in entries:
        pairs = _split_images(base / str(entry), images_dir, yaml_path, split)
        images += [_read_image(image, label, names) for image, label in pairs]
    return images, names


def given_splits(data: dict) -> list[str]:
    """The splits a parsed ``data.yaml`` names (``train``, ``val``, ``test``), in that order."""
    return [k for k in ("train", "val", "test") if data.get(k)]


def find_data_yaml(path: Path) -> Path:
    """``path`` itself when it is a file, else its ``data.yaml`` (or ``dataset.yaml``)."""
    if path.is_file():
        return path
    for name in YAML_NAMES:
        if (path / name).is_file():
            return path / name
    raise DataError(f"{path / YAML_NAMES[0]}: YOLO data.yaml not found")


def read_data_yaml(yaml_path: Path) -> dict:
    """The parsed ``data.yaml``: a mapping, else a DataError with the line (aliases that
    expand too far are refused, see :func:`kdetect.plumbing.parsing.load_yaml`)."""
    text = read_text_file(yaml_path, "data.yaml")
    try:
        data = load_yaml(text, str(yaml_path), DataError)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise DataError(f"{yaml_path}: malformed YAML{line}") from None
    if not isinstance(data, dict):
        raise DataError(f"{yaml_path}: expected a mapping with 'names' and the split paths")
    return data


def class_names(data: dict, yaml_path: Path) -> list[str]:
    """``names`` as a list in id order; a mapping needs the integer ids ``0..n-1``."""
    names = data.get("names")
    if names is None:
        raise DataError(f"{yaml_path}: missing 'names' (the class names)")
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(f"{yaml_path}: 'names' keys must be integer class ids") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise DataError(f"{yaml_path}: 'names' ids must be 0..{len(by_id) - 1}")
        names = [by_id[i] for i in range(len(by_id))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{yaml_path}: 'names' must be a non-empty list or {{id: name}} mapping")
    return [str(n).strip() for n in names]


def label_path(image: Path) -> Path:
    """Where the label file of ``image`` is: its last ``images`` folder becomes ``labels``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _split_images(
    entry: Path, images_dir: Path | None, yaml_path: Path, split: str
) -> list[tuple[Path, Path]]:
    """``(image, label file)`` of one split entry (a folder or a ``.txt`` list of images)."""
    if entry.is_file() and entry.suffix == ".txt":
        lines = read_text_file(entry, f"{split!r} image list").splitlines()
        listed = [Path(s.strip()) for s in lines if s.strip()]
        return [(p if p.is_absolute() else entry.parent / p, None) for p in listed]
    if images_dir is None and not entry.is_dir():
        raise DataError(f"{yaml_path}: {split!r} folder {entry} not found")
    folder = images_dir if images_dir is not None else entry
    images = sorted(p for p in folder.rglob("*") if p.suffix in IMAGE_EXTENSIONS and p.is_file())
    labels = label_path(entry / "x").parent
    pairs = [(image, labels / image.relative_to(folder).with_suffix(".txt")) for image in images]
    if labels != entry:  # labels beside the images: other .txt files may sit there too
        _refuse_orphan_labels(labels, {label for _, label in pairs}, folder)
    return pairs


def _refuse_orphan_labels(labels: Path, expected: set[Path], folder: Path) -> None:
    """A DataError for the first label file of ``labels`` that no image of ``folder`` has."""
    if not labels.is_dir():
        return
    for label in sorted(labels.rglob("*.txt")):
        if label not in expected and not label.name.startswith("."):
            raise DataError(f"{label}: label file without an image (looked in {folder})")


def _read_image(image: Path, label: Path | None, names: list[str]) -> RawImage:
    """One image with the objects of its label file (none when the file does not exist)."""
    label = label_path(image) if label is None else label
    width, height = image_size(image) if image.is_file() else (0, 0)
    raw = RawImage(filename=str(image), width=width, height=height, where=str(label))
    if not os.path.isfile(label):
        if os.path.exists(label):
            raise DataError(f"{label}: label path is not a file (a folder?)")
        return raw
    lines = read_text_file(label, "label file").splitlines()
    for k, line in enumerate(lines, start=1):
        if line.strip():
            raw.objects.append(_parse_line(line, f"{label}:{k}", names, width, height))
    return raw


def _parse_line(line: str, where: str, names: list[str], width: int, height: int) -> RawObject:
    """``class cx cy w h`` (normalised) -> an ``xyxy`` pixel box of class ``names[class]``."""
    fields = line.split()
    if len(fields) != 5:
        hint = " (a 6th field is a score: predictions, not labels)" if len(fields) == 6 else ""
        raise DataError(f"{where}: expected 5 fields 'class cx cy w h', found {len(fields)}{hint}")
    class_id = number(fields[0], "class id", where)
    if not math.isfinite(class_id) or class_id != int(class_id) or not 0 <= class_id < len(names):
        raise DataError(
            f"{where}: class id {fields[0]} is not one of 0..{len(names) - 1} (names in data.yaml)"
        )
    values = [number(text, what, where) for text, what in zip(fields[1:], ("cx", "cy", "w", "h"))]
    for value, what in zip(values, ("cx", "cy", "w", "h")):
        if not 0.0 <= value <= 1.0:
            raise DataError(f"{where}: {what} {value:g} is outside [0, 1] (normalised)")
    cx, cy, w, h = values
    box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
    return RawObject(names[int(class_id)], float32_box(box), False, where)
