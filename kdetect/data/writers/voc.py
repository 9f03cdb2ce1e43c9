"""PASCAL VOC: ``JPEGImages/``, ``Annotations/<id>.xml`` and ``ImageSets/Main/<split>.txt``.

Boxes are written as they are held (no 1-based shift, as the reader reads them); the difficult
flag is kept. VOC has no class list: ``classes.txt`` beside it lists the classes in label order
(give it to ``--classes`` to keep that order, the readers otherwise sort the names).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from kdetect.data.records import Annotations, Record
from kdetect.data.writers.common import ImageFiles, class_name, text_number

SPLIT_FOLDER = Path("ImageSets") / "Main"


def write_voc(parts: dict[str, Annotations], root: Path, images: ImageFiles) -> None:
    """One XML per image, one id list per split, the images in ``JPEGImages/``."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / SPLIT_FOLDER).mkdir(parents=True, exist_ok=True)
    for split, part in parts.items():
        ids = []
        for record in part.records:
            image_id = Path(record.filename).stem
            images.claim(f"Annotations/{image_id}.xml", record.filename)
            name = Path(images.place(record, "JPEGImages")).name
            xml = voc_xml(record, part.classes, name)
            (root / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
            ids.append(image_id)
        (root / SPLIT_FOLDER / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    classes = next(iter(parts.values())).classes
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")


def voc_xml(record: Record, classes: list[str], filename: str | None = None) -> str:
    """The VOC ``<annotation>`` of one record, as text."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename or os.path.basename(record.filename)
    size = ET.SubElement(root, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(int(value))
    for box, label, difficult in zip(record.boxes, record.labels, record.difficult, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_name(classes, label)
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, tag).text = text_number(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"
