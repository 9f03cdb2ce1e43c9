"""Readers (VOC, COCO, CSV) on the real shared data and on every kind of bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdetect.data.images import encode_for_record, image_size, load_image
from kdetect.data.readers import read_annotations, scan_annotations
from kdetect.plumbing.errors import DataError
from tests.data_support import (
    TINY,
    _jpeg,
    assert_same_records,
    by_name,
    write_coco,
    write_csv,
    write_labelstudio,
    write_voc,
    write_yolo,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def needs(name: str) -> Path:
    path = SHARED / name
    if not (path / "Annotations").is_dir():
        pytest.skip(f"shared data {path} is not available")
    return path


# --------------------------------------------------------------------------------------------
# a tiny dataset in all three formats (written by tests/data_support.py)


# --------------------------------------------------------------------------------------------
# real data: the three formats agree


@pytest.mark.parametrize("dataset", ["bccd", "raccoon"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_three_readers_agree_on_real_data(dataset, split):
    root = needs(dataset)
    policy = "drop"  # BCCD val holds two zero-area boxes
    voc = read_annotations("voc", root, split, on_invalid_box=policy)
    coco = read_annotations("coco", root, split, on_invalid_box=policy)
    csv_ = read_annotations("csv", root, split, on_invalid_box=policy)
    assert_same_records(voc, coco)
    assert_same_records(voc, csv_)
    expected_classes = (root / "classes.txt").read_text().split()
    assert voc.classes == expected_classes
    assert all(r.boxes.dtype == np.float32 and r.labels.dtype == np.int32 for r in voc.records)
    assert all(os.path.isfile(r.filename) for r in csv_.records[:5])
    ids = [r.image_id for r in coco.records]
    assert all(isinstance(i, int) for i in ids)


def test_bccd_zero_area_boxes_error_drop_clip():
    root = needs("bccd")
    for fmt in ("voc", "coco", "csv"):
        with pytest.raises(DataError, match="BloodImage_00338|val.csv:794|annotation id") as err:
            read_annotations(fmt, root, "val")
        assert "2 invalid boxes" in str(err.value)
        assert "xmax <= xmin" in str(err.value)
    dropped = read_annotations("voc", root, "val", on_invalid_box="drop")
    clipped = read_annotations("csv", root, "val", on_invalid_box="clip")
    assert_same_records(dropped, clipped)
    assert sum(len(r.labels) for r in dropped.records) == 966 - 2
    # the split without bad boxes reads with the default policy
    assert len(read_annotations("voc", root, "train")) == 292


def test_raccoon_grayscale_becomes_rgb():
    root = needs("raccoon")
    image = load_image(root / "JPEGImages" / "raccoon-150.jpg")
    assert image.shape == (183, 275, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], image[..., 1])


# --------------------------------------------------------------------------------------------
# tiny dataset: formats agree, classes, empty images


def test_tiny_formats_agree(tmp_path):
    voc = read_annotations("voc", write_voc(tmp_path / "voc"), "train")
    coco = read_annotations("coco", write_coco(tmp_path / "coco"), "train")
    csv_ = read_annotations("csv", write_csv(tmp_path / "csv"), "train")
    yolo = read_annotations("yolo", write_yolo(tmp_path / "yolo"), "train")
    studio = read_annotations("labelstudio", write_labelstudio(tmp_path / "ls"), "train")
    assert voc.classes == ["cat", "dog"]  # sorted names
    assert_same_records(voc, coco)
    # CSV, YOLO and Label Studio have no difficult flag; YOLO and Label Studio boxes are
    # normalised / percent values multiplied out, equal again once rounded to float32
    for other in (csv_, yolo, studio):
        assert_same_records(voc, other, check_difficult=False)
    a = by_name(voc)["a.jpg"]
    np.testing.assert_array_equal(a.boxes, [[1, 2, 30, 40], [10, 10, 64, 48]])
    np.testing.assert_array_equal(a.labels, [1, 0])
    np.testing.assert_array_equal(a.difficult, [False, True])
    assert len(by_name(voc)["c.jpg"].labels) == 0


def _yolo_list(root: Path) -> Path:
    root = write_yolo(root)
    (root / "list.txt").write_text("images/train/a.jpg\nimages/train/b.jpg\nimages/train/c.jpg\n")
    (root / "data.yaml").write_text("train: list.txt\nnames: [cat, dog]\n")
    return root


BOM_SOURCES = {
    "voc": write_voc,
    "coco": write_coco,
    "csv": write_csv,
    "yolo": write_yolo,
    "yolo list": _yolo_list,
    "labelstudio": write_labelstudio,
}


@pytest.mark.parametrize("case", BOM_SOURCES)
def test_text_files_may_start_with_a_byte_order_mark(tmp_path, case):
    root = BOM_SOURCES[case](tmp_path / "data")
    format = case.split()[0]
    before = read_annotations(format, root, "train")
    texts = [p for p in root.rglob("*") if p.suffix in (".txt", ".json", ".csv", ".yaml", ".xml")]
    for path in texts:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert_same_records(before, read_annotations(format, root, "train"))


def test_given_class_list_sets_ids(tmp_path):
    root = write_voc(tmp_path / "voc")
    ann = read_annotations("voc", root, "train", classes="dog,cat,bird")
    assert ann.classes == ["dog", "cat", "bird"]
    np.testing.assert_array_equal(by_name(ann)["a.jpg"].labels, [0, 1])


def test_coco_classes_follow_category_ids(tmp_path):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_train.json"
    doc = json.loads(path.read_text())
    doc["categories"] = [{"id": 3, "name": "zebra"}] + doc["categories"]  # unused, lowest id
    path.write_text(json.dumps(doc))
    assert read_annotations("coco", path, "train").classes == ["zebra", "cat", "dog"]


def test_limit_keeps_class_ids(tmp_path):
    root = write_voc(tmp_path / "voc")
    ann, _ = scan_annotations("voc", root, "train", limit=1)
    assert len(ann) == 1 and ann.classes == ["cat", "dog"]


# --------------------------------------------------------------------------------------------
# bad input: a DataError that names the file


def test_missing_image(tmp_path):
    root = write_voc(tmp_path / "voc")
    (root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"b\.xml.*b\.jpg not found"):
        read_annotations("voc", root, "train")
    with pytest.raises(DataError, match="not found"):
        load_image(root / "JPEGImages" / "b.jpg")


def test_corrupt_and_truncated_jpeg(tmp_path):
    good = tmp_path / "good.jpg"
    _jpeg(good, 64, 64)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(DataError, match=r"truncated\.jpg: corrupt or truncated"):
        load_image(truncated)
    with pytest.raises(DataError, match=r"truncated\.jpg"):
        encode_for_record(truncated)
    with pytest.raises(DataError, match=r"corrupt\.jpg: not a readable image"):
        load_image(corrupt)


def test_malformed_xml(tmp_path):
    root = write_voc(tmp_path / "voc")
    (root / "Annotations" / "b.xml").write_text("<annotation><size><width>4</width>")
    with pytest.raises(DataError, match=r"b\.xml: malformed XML.*line"):
        read_annotations("voc", root, "train")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("<ymax>25</ymax>", "", "b.xml: object 1 (cat): missing <ymax>"),
        ("<width>40</width>", "<width>wide</width>", "b.xml: <width> 'wide' is not a number"),
        ("<width>40</width>", "<width>nan</width>", "b.xml: image size nanx50 is not positive"),
        ("<height>50</height>", "<height>inf</height>", "b.xml: image size 40xinf is not positive"),
        ("<difficult>0</difficult>", "<difficult>maybe</difficult>",
         'b.xml: object 1: <difficult>: expected true or false (yes/no, 1/0), got "maybe"'),
    ],
)  # fmt: skip
def test_voc_bad_fields_are_one_line(tmp_path, old, new, message):
    root = write_voc(tmp_path / "voc")
    xml = root / "Annotations" / "b.xml"
    xml.write_text(xml.read_text().replace(old, new))
    with pytest.raises(DataError) as info:
        read_annotations("voc", root, "train")
    assert str(info.value).startswith(f"{root / 'Annotations' / message}")


def test_malformed_json(tmp_path):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_train.json"
    path.write_text(path.read_text()[:-5])
    with pytest.raises(DataError, match=r"instances_train\.json: malformed JSON \(line 1"):
        read_annotations("coco", root, "train")


def test_coco_unknown_category(tmp_path):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_train.json"
    doc = json.loads(path.read_text())
    doc["annotations"][1]["category_id"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"annotation id 2: unknown category_id 99"):
        read_annotations("coco", root, "train")


def _drop(key: str, where: str = "annotations", index: int = 1):
    return lambda doc: doc[where][index].pop(key)


def _set(key: str, value, where: str = "annotations", index: int = 1):
    return lambda doc: doc[where][index].update({key: value})


# case -> (change to a valid COCO document, the message after "instances_train.json: ")
BAD_COCO = {
    "no bbox": (_drop("bbox"), "annotation id 2: missing 'bbox'"),
    "no category_id": (_drop("category_id"), "annotation id 2: missing 'category_id'"),
    "no image_id": (_drop("image_id"), "annotation id 2: missing 'image_id'"),
    "no annotation id": (
        lambda doc: [doc["annotations"][1].pop("id"), doc["annotations"][1].pop("bbox")],
        "annotations[1]: missing 'bbox'",
    ),
    "no file_name": (
        _drop("file_name", "images", 0),
        "images[0] (id 1): missing 'file_name' (the image file, a string)",
    ),
    "file_name a number": (
        _set("file_name", 7, "images", 0),
        "images[0] (id 1): bad 7 for 'file_name' (the image file, a string)",
    ),
    "bbox as strings": (
        _set("bbox", ["1", "2", "10", "10"]),
        "annotation id 2: 'bbox'[0] must be a number, got '1'",
    ),
    "bbox with a boolean": (
        _set("bbox", [1, True, 10, 10]),
        "annotation id 2: 'bbox'[1] must be a number, got True",
    ),
    "bbox of 3": (
        _set("bbox", [1, 2, 10]),
        "annotation id 2: 'bbox' must be [x, y, width, height], got [1, 2, 10]",
    ),
    "category_id a string": (
        _set("category_id", "10"),
        "annotation id 2: 'category_id' must be an integer, got '10'",
    ),
    "category_id a boolean": (
        _set("category_id", True),
        "annotation id 2: 'category_id' must be an integer, got True",
    ),
    "width a string": (
        _set("width", "64", "images", 0),
        "images[0] (id 1): 'width' must be a number, got '64'",
    ),
    "height missing": (_drop("height", "images", 0), "images[0] (id 1): missing 'height'"),
    "iscrowd maybe": (
        _set("iscrowd", "maybe"),
        "annotation id 2: 'iscrowd': expected true or false (yes/no, 1/0), got \"maybe\"",
    ),
}


@pytest.mark.parametrize("case", BAD_COCO, ids=list(BAD_COCO))
def test_coco_bad_annotations_name_the_annotation_and_key(case, tmp_path):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_train.json"
    doc = json.loads(path.read_text())
    change, message = BAD_COCO[case]
    change(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError) as info:
        read_annotations("coco", root, "train")
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    "row, message",
    [
        ("a.jpg,64,48,dog,1,2,30", r"train\.csv:3: expected 8 fields, found 7"),
        ("a.jpg,64,48,dog,1,two,30,40", r"train\.csv:3: ymin 'two' is not a number"),
        ("a.jpg,65,48,dog,1,2,30,40", r"train\.csv:3: a\.jpg is 65x48 here but 64x48"),
    ],
)
def test_malformed_csv(tmp_path, row, message):
    root = write_csv(tmp_path / "csv")
    lines = (root / "train.csv").read_text().splitlines()
    lines.insert(2, row)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_annotations("csv", root, "train")


def test_csv_needs_header(tmp_path):
    root = write_csv(tmp_path / "csv")
    lines = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"train\.csv:1: header must name"):
        read_annotations("csv", root, "train")


@pytest.mark.parametrize(
    "box, reason",
    [((10, 5, 70, 20), "outside the 64x48 image"), ((30, 5, 30, 20), "xmax <= xmin"),
     ((10, 20, 30, 5), "ymax <= ymin"), ((-3, 5, 30, 20), "outside")],
)  # fmt: skip
def test_invalid_box_error_clip_drop(tmp_path, box, reason):
    data = dict(TINY)
    data["a.jpg"] = (64, 48, [("dog", *box, 0), ("cat", 1, 1, 5, 5, 0)])
    root = write_voc(tmp_path / "voc", data)
    with pytest.raises(DataError, match=rf"1 invalid box: .*a\.xml: object 1 \(dog\).*{reason}"):
        read_annotations("voc", root, "train")
    dropped = by_name(read_annotations("voc", root, "train", on_invalid_box="drop"))["a.jpg"]
    np.testing.assert_array_equal(dropped.boxes, [[1, 1, 5, 5]])
    clipped = by_name(read_annotations("voc", root, "train", on_invalid_box="clip"))["a.jpg"]
    if reason.startswith("outside"):
        x1, y1, x2, y2 = box
        expected = [max(x1, 0), max(y1, 0), min(x2, 64), min(y2, 48)]
        np.testing.assert_array_equal(clipped.boxes[0], expected)
        assert len(clipped.boxes) == 2
    else:  # no area left after clipping: dropped
        assert len(clipped.boxes) == 1


def test_unknown_class_with_class_list(tmp_path):
    for fmt, writer, where in [
        ("voc", write_voc, r"a\.xml: object 2"),
        ("coco", write_coco, r"annotation id 2"),
        ("csv", write_csv, r"train\.csv:3"),
        ("yolo", write_yolo, r"labels/train/a\.txt:2"),
        ("labelstudio", write_labelstudio, r"train\.json: task 1: region r1"),
    ]:
        root = writer(tmp_path / fmt)
        with pytest.raises(DataError, match=rf"{where}: unknown class 'cat'"):
            read_annotations(fmt, root, "train", classes=["dog"])


def test_empty_and_missing_split(tmp_path):
    root = write_voc(tmp_path / "voc")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n")
    with pytest.raises(DataError, match="split 'val' has no images"):
        read_annotations("voc", root, "val")
    with pytest.raises(DataError, match=r"test\.txt: split file not found \(available: train"):
        read_annotations("voc", root, "test")
    coco = write_coco(tmp_path / "coco")
    (coco / "annotations" / "instances_val.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []})
    )
    with pytest.raises(DataError, match="split 'val' has no images"):
        read_annotations("coco", coco, "val")
    csv_root = write_csv(tmp_path / "csv")
    (csv_root / "val.csv").write_text("filename,width,height,class,xmin,ymin,xmax,ymax\n")
    with pytest.raises(DataError, match="split 'val' has no images"):
        read_annotations("csv", csv_root, "val")


def test_unknown_format_and_path(tmp_path):
    with pytest.raises(DataError, match="unknown dataset format"):
        read_annotations("kitti", tmp_path, "train")
    with pytest.raises(DataError, match="does not exist"):
        read_annotations("voc", tmp_path / "nope", "train")


# --------------------------------------------------------------------------------------------
# image modes and EXIF


def test_exif_orientation_is_honoured(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high
    pixels[:, :10] = 255  # left band white
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    assert image_size(path) == (20, 40)
    image = load_image(path)
    assert image.shape == (40, 20, 3)
    assert image[:8].mean() > 200 and image[-8:].mean() < 50  # the left band is now on top
    data, fmt, w, h = encode_for_record(path)
    assert (fmt, w, h) == ("png", 20, 40)


def test_rgba_and_palette_become_rgb(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.shape == (8, 8, 3)
    assert image[0, 0].tolist() == [200, 0, 0] and image[7, 7].tolist() == [0, 0, 0]
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (8, 8, 3)
