"""PASCAL VOC: ``ImageSets/Main/<split>.txt`` lists the ids, ``Annotations/<id>.xml`` holds each.

Boxes are the ``<bndbox>`` values unchanged (VOC's 1-based pixel indices are not shifted; the
VOC metric applies the devkit's +1 convention itself); ``<difficult>`` is kept. A missing or zero
``<size>`` is read from the image header instead.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from kdetect.data.images import image_size
from kdetect.data.readers.common import (
    RawImage,
    RawObject,
    find_image,
    image_pixels,
    number,
    read_text_file,
)
from kdetect.plumbing.errors import DataError
from kdetect.plumbing.parsing import parse_bool


def read_voc(path: Path, split: str, images_dir: Path | None) -> tuple[list[RawImage], None]:
    """The images of ``split`` (the class list comes from the names found)."""
    root = _voc_root(path)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
        hint = f" (available: {', '.join(available)})" if available else ""
        raise DataError(f"{split_file}: split file not found{hint}")
    ids = []
    for line in read_text_file(split_file, "split file").splitlines():
        parts = line.split()
        if parts:
            ids.append(parts[0])
    folders = [images_dir] if images_dir is not None else [root / "JPEGImages"]
    return [_read_voc_xml(root / "Annotations" / f"{i}.xml", i, folders) for i in ids], None


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


def _read_voc_xml(xml_path: Path, image_id: str, folders: list[Path]) -> RawImage:
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
    filename = find_image(name or f"{image_id}.jpg", folders, stem_fallback=True)
    if name and not os.path.isfile(filename):
        filename = find_image(f"{image_id}.jpg", folders, stem_fallback=True)
    width, height = _voc_size(root, filename, where)
    image = RawImage(filename=filename, width=width, height=height, where=where)
    for k, obj in enumerate(root.findall("object"), start=1):
        image.objects.append(_voc_object(obj, f"{where}: object {k}"))
    return image


def _voc_size(root: ET.Element, filename: str, where: str) -> tuple[int, int]:
    size = root.find("size")
    texts = [size.findtext(tag) if size is not None else None for tag in ("width", "height")]
    values = [
        number(text, f"<{tag}>", where) if text is not None and text.strip() else 0.0
        for text, tag in zip(texts, ("width", "height"))
    ]
    if values[0] <= 0 or values[1] <= 0:
        # Some tools write <size> as 0 or leave it out: the image header is the truth then.
        if not os.path.isfile(filename):
            raise DataError(f"{where}: no <size> and image {filename} not found")
        return image_size(filename)
    return image_pixels(*values, where)


def _voc_object(obj: ET.Element, where: str) -> RawObject:
    class_name = (obj.findtext("name") or "").strip()
    if not class_name:
        raise DataError(f"{where}: missing <name>")
    box_el = obj.find("bndbox")
    if box_el is None:
        raise DataError(f"{where} ({class_name}): missing <bndbox>")
    box = tuple(
        number(box_el.findtext(tag), f"<{tag}>", f"{where} ({class_name})")
        for tag in ("xmin", "ymin", "xmax", "ymax")
    )
    difficult = parse_bool(obj.findtext("difficult") or "0", f"{where}: <difficult>", DataError)
    return RawObject(class_name, box, difficult, where)
