"""A tiny dataset (three images, two classes) written as VOC, COCO or CSV, and crafted bad image
files, for the data and input tests."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _jpeg(path: Path, width: int = 64, height: int = 48, mode: str = "RGB") -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, quality=90)


# image name -> (width, height, [(class, xmin, ymin, xmax, ymax, difficult)])
TINY = {
    "a.jpg": (64, 48, [("dog", 1, 2, 30, 40, 0), ("cat", 10, 10, 64, 48, 1)]),
    "b.jpg": (40, 50, [("cat", 0, 0, 20, 25, 0)]),
    "c.jpg": (32, 32, []),
}


def write_voc(root: Path, data=TINY, split: str = "train") -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, (w, h, objects) in data.items():
        _jpeg(root / "JPEGImages" / name, w, h)
        objs = "".join(
            f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2, d in objects
        )
        xml = (
            f"<annotation><filename>{name}</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>"
        )
        (root / "Annotations" / f"{Path(name).stem}.xml").write_text(xml)
    ids = "\n".join(Path(n).stem for n in data)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text(ids + "\n")
    return root


def write_coco(root: Path, data=TINY, split: str = "train") -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir(exist_ok=True)
    names = sorted({o[0] for _, _, objs in data.values() for o in objs})
    cats = [{"id": 10 + i, "name": n} for i, n in enumerate(names)]
    images, anns = [], []
    for i, (name, (w, h, objects)) in enumerate(data.items(), start=1):
        _jpeg(root / "images" / name, w, h)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        for c, x1, y1, x2, y2, d in objects:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 10 + names.index(c),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": d,
                }
            )
    doc = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def write_csv(root: Path, data=TINY, split: str = "train") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
    for name, (w, h, objects) in data.items():
        _jpeg(root / name, w, h)
        if not objects:
            lines.append(f"{name},{w},{h},,,,,")
        for c, x1, y1, x2, y2, _ in objects:
            lines.append(f"{name},{w},{h},{c},{x1},{y1},{x2},{y2}")
    (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: the header of a decompression bomb (a few bytes)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_yolo(root: Path, data=TINY, split: str = "train", names=("cat", "dog")) -> Path:
    """Ultralytics layout: data.yaml (names as a list), images/<split>/, labels/<split>/ (no
    label file for an image without boxes)."""
    (root / "images" / split).mkdir(parents=True)
    (root / "labels" / split).mkdir(parents=True)
    for name, (w, h, objects) in data.items():
        _jpeg(root / "images" / split / name, w, h)
        lines = [
            f"{names.index(c)} {(x1 + x2) / 2 / w!r} {(y1 + y2) / 2 / h!r} "
            f"{(x2 - x1) / w!r} {(y2 - y1) / h!r}\n"
            for c, x1, y1, x2, y2, _ in objects
        ]
        if lines:
            (root / "labels" / split / f"{Path(name).stem}.txt").write_text("".join(lines))
    listed = ", ".join(f"'{n}'" for n in names)
    (root / "data.yaml").write_text(f"path: .\n{split}: images/{split}\nnames: [{listed}]\n")
    return root


def write_labelstudio(root: Path, data=TINY, split: str = "train") -> Path:
    """Label Studio's JSON export: uploaded-file URLs (8 hex digits and a dash before the name),
    percent regions, and an older cancelled annotation that must be ignored."""
    (root / "images").mkdir(parents=True)
    tasks = []
    for k, (name, (w, h, objects)) in enumerate(data.items(), start=1):
        _jpeg(root / "images" / name, w, h)
        result = [
            {"id": f"r{n}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
             "original_width": w, "original_height": h,
             "value": {"x": 100 * x1 / w, "y": 100 * y1 / h, "width": 100 * (x2 - x1) / w,
                       "height": 100 * (y2 - y1) / h, "rotation": 0, "rectanglelabels": [c]}}
            for n, (c, x1, y1, x2, y2, _) in enumerate(objects)
        ]  # fmt: skip
        cancelled = {"id": 100 + k, "was_cancelled": True, "result": result[:1] * 3,
                     "updated_at": "2030-01-01T00:00:00Z"}  # fmt: skip
        done = {"id": k, "was_cancelled": False, "result": result,
                "updated_at": "2024-05-01T10:00:00Z"}  # fmt: skip
        stale = {"id": 50 + k, "result": [], "updated_at": "2024-04-01T10:00:00Z"}
        tasks.append({"id": k, "data": {"image": f"/data/upload/3/0a1b2c3d-{name}"},
                      "annotations": [stale, done, cancelled]})  # fmt: skip
    (root / f"{split}.json").write_text(json.dumps(tasks))
    return root


def by_name(annotations) -> dict:
    """The records of ``annotations`` by image file name."""
    return {os.path.basename(r.filename): r for r in annotations.records}


def assert_same_records(a, b, check_difficult: bool = True, atol: float | None = None) -> None:
    """Same classes, images (by file name), sizes and labels; boxes equal, or within ``atol``
    pixels when given (formats that store normalised or percent coordinates)."""
    assert a.classes == b.classes
    ra, rb = by_name(a), by_name(b)
    assert ra.keys() == rb.keys()
    for name, x in ra.items():
        y = rb[name]
        assert (x.width, x.height) == (y.width, y.height), name
        if atol is None:
            np.testing.assert_array_equal(x.boxes, y.boxes, err_msg=name)
        else:
            np.testing.assert_allclose(x.boxes, y.boxes, atol=atol, rtol=0, err_msg=name)
        np.testing.assert_array_equal(x.labels, y.labels, err_msg=name)
        if check_difficult:
            np.testing.assert_array_equal(x.difficult, y.difficult, err_msg=name)
