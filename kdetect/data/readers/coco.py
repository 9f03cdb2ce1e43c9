"""COCO: one instances JSON per split (``images``, ``annotations``, ``categories``).

``bbox`` ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``; ``iscrowd`` becomes the difficult
flag. The class list is the ``categories`` ordered by id (all of them, used or not).
"""

from __future__ import annotations

from pathlib import Path

from kdetect.data.readers.common import (
    RawImage,
    RawObject,
    find_annotation_file,
    find_image,
    image_pixels,
    json_number,
    read_json_file,
    refuse_duplicates,
)
from kdetect.plumbing.errors import DataError
from kdetect.plumbing.parsing import parse_bool


def read_coco(path: Path, split: str, images_dir: Path | None) -> tuple[list[RawImage], list[str]]:
    """The images of ``split`` and the category names in id order."""
    json_path = find_annotation_file(
        path,
        [
            path / "annotations" / f"instances_{split}.json",
            path / "coco" / f"instances_{split}.json",
            path / f"instances_{split}.json",
            path / "annotations" / f"{split}.json",
            path / f"{split}.json",
        ],
        f"COCO annotation file for split {split!r}",
    )
    data = read_coco_json(json_path)
    where = str(json_path)
    category_names = _categories(data["categories"], where)
    root = dataset_roots(path)[0]  # path is json_path when a file is given
    folders = [images_dir] if images_dir is not None else _image_folders(root, split, json_path)
    images = _images(data["images"], where, folders)
    for k, ann in enumerate(data["annotations"]):
        _add_annotation(ann, k, where, images, category_names)
    return list(images.values()), [category_names[i] for i in sorted(category_names)]


def dataset_roots(path: Path) -> list[Path]:
    """The dataset folder: the one given, or the parent of the annotation file's folder
    (``annotations/instances_train.json`` beside ``images/``)."""
    return [path if path.is_dir() else path.parent.parent]


def read_coco_json(json_path: Path) -> dict:
    """The instances JSON of ``json_path``, checked to be an object with the three lists."""
    data = read_json_file(json_path)
    if not isinstance(data, dict):
        raise DataError(f"{json_path}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{json_path}: missing or malformed {key!r} list")
    return data


def _image_folders(root: Path, split: str, json_path: Path) -> list[Path]:
    return [
        root / split,
        root / "images" / split,
        root / "images",
        root / "JPEGImages",
        json_path.parent,
        json_path.parent / "images",
        root,
    ]


def _categories(categories: list, where: str) -> dict[int, str]:
    """Category id -> name, refusing repeated ids or names."""
    try:
        categories = sorted(categories, key=lambda c: int(c["id"]))
        category_names = {int(c["id"]): str(c["name"]).strip() for c in categories}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: every category needs an integer 'id' and a 'name'") from None
    refuse_duplicates(where, "category id", [int(c["id"]) for c in categories])
    refuse_duplicates(where, "category name", [str(c["name"]).strip() for c in categories])
    return category_names


def _images(infos: list, where: str, folders: list[Path]) -> dict[int, RawImage]:
    """Image id -> image, refusing entries without an id, file name or whole-pixel size."""
    images: dict[int, RawImage] = {}
    for k, info in enumerate(infos):
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
        w = json_number(info, "width", img_where)
        h = json_number(info, "height", img_where)
        if image_id in images:
            ids = [i.get("id") for i in infos if isinstance(i, dict)]
            refuse_duplicates(where, "image id", ids)
        width, height = image_pixels(w, h, img_where)
        images[image_id] = RawImage(
            filename=find_image(str(info["file_name"]), folders),
            width=width,
            height=height,
            where=f"{where}: image id {image_id}",
            image_id=image_id,
        )
    return images


def _add_annotation(
    ann: object, k: int, where: str, images: dict[int, RawImage], category_names: dict[int, str]
) -> None:
    """Append annotation ``k`` to its image, refusing unknown ids and malformed boxes."""
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
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise DataError(f"{ann_where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
    x, y, bw, bh = (json_number(ann, "bbox", ann_where, i) for i in range(4))
    box = (x, y, x + bw, y + bh)
    crowd = ann.get("iscrowd")
    difficult = crowd is not None and parse_bool(crowd, f"{ann_where}: 'iscrowd'", DataError)
    image.objects.append(RawObject(category_names[category], box, difficult, ann_where))
