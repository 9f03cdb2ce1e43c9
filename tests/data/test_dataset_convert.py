"""``kdetect dataset convert`` and the writers: lossless round trips, atomic output, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kdetect.cli import main
from kdetect.data.readers import find_splits, read_annotations
from kdetect.data.writers import WRITERS, convert_dataset, write_dataset
from kdetect.plumbing.errors import DataError, OutputError
from tests import data_support as ds
from tests.data_support import assert_same_records

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SOURCES = {
    "voc": ds.write_voc,
    "coco": ds.write_coco,
    "csv": ds.write_csv,
    "yolo": ds.write_yolo,
    "labelstudio": ds.write_labelstudio,
}
KEEPS_DIFFICULT = {"voc", "coco"}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") or "tmp" in p.name)


@pytest.mark.parametrize("target", list(WRITERS))
@pytest.mark.parametrize("source", list(SOURCES))
def test_every_format_round_trips(tmp_path, source, target):
    root = SOURCES[source](tmp_path / "src")
    before = read_annotations(source, root, "train")
    out = tmp_path / "out"
    convert_dataset(source, root, ["train"], target, out)
    after = read_annotations(target, out, "train")
    assert_same_records(
        before, after, source in KEEPS_DIFFICULT and target in KEEPS_DIFFICULT, atol=0.0
    )
    assert all(Path(r.filename).is_relative_to(out) for r in after.records)  # images copied
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("dataset", ["bccd", "raccoon"])
def test_real_data_round_trips_through_every_format(tmp_path, dataset):
    root = SHARED / dataset
    if not (root / "Annotations").is_dir():
        pytest.skip(f"shared data {root} is not available")
    splits = ["train", "val"]
    before = {s: read_annotations("voc", root, s, on_invalid_box="drop") for s in splits}
    for target in WRITERS:
        out = tmp_path / target
        convert_dataset("voc", root, splits, target, out, on_invalid_box="drop", link=True)
        for split in splits:
            after = read_annotations(target, out, split)
            # raccoon images are up to 2000 px wide: YOLO's normalised floats must hold 1e-3 px
            assert_same_records(before[split], after, target in KEEPS_DIFFICULT, atol=1e-3)


def test_splits_share_one_class_list(tmp_path):
    data = {"a.jpg": ds.TINY["a.jpg"], "b.jpg": ds.TINY["b.jpg"]}
    root = ds.write_voc(tmp_path / "voc", data)
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")  # only cats: classes ['cat']
    out = tmp_path / "yolo"
    convert_dataset("voc", root, ["val", "train"], "yolo", out)
    assert read_annotations("yolo", out, "val").classes == ["cat", "dog"]
    np.testing.assert_array_equal(read_annotations("yolo", out, "val").records[0].labels, [0])
    assert "names:\n  0: cat\n  1: dog\n" in (out / "data.yaml").read_text()


def test_yolo_output_layout(tmp_path):
    root = ds.write_voc(tmp_path / "voc")
    out = tmp_path / "yolo"
    convert_dataset("voc", root, ["train"], "yolo", out)
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == [
        "a.jpg",
        "b.jpg",
        "c.jpg",
    ]
    assert (out / "labels" / "train" / "c.txt").read_text() == ""  # background image
    assert (out / "labels" / "train" / "b.txt").read_text() == "0 0.25 0.25 0.5 0.5\n"


def _convert(*argv) -> int:
    return main(["dataset", "convert", *[str(a) for a in argv]])


def test_cli_convert_and_overwrite(tmp_path, capsys):
    root = ds.write_coco(tmp_path / "coco")
    out = tmp_path / "out"
    assert _convert(root, "--type", "coco", "--to", "labelstudio", "--output", out) == 0
    assert "train: 3 images, 3 boxes" in capsys.readouterr().out
    tasks = json.loads((out / "train.json").read_text())
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=images/train/a.jpg"
    assert _convert(root, "--type", "coco", "--to", "voc", "--output", out) == 1
    err = capsys.readouterr().err
    assert "folder is not empty; use --overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "train.json").is_file()  # untouched
    assert _convert(root, "--type", "coco", "--to", "voc", "-o", out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "Annotations", "ImageSets", "JPEGImages", "classes.txt"
    ]  # fmt: skip
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["bad_box", "collision", "missing_split", "into_source"])
def test_cli_convert_failure_leaves_nothing(tmp_path, capsys, case):
    root = ds.write_coco(tmp_path / "coco")
    doc_path = root / "annotations" / "instances_train.json"
    doc = json.loads(doc_path.read_text())
    out, split = tmp_path / "out", "train"
    if case == "bad_box":
        doc["annotations"][0]["bbox"] = [1, 2, 300, 40]
        expected = "annotation id 1 (dog) box [1, 2, 301, 42] reaches outside the 64x48 image"
    elif case == "collision":  # two images named a.jpg in two folders: one output file
        for sub in ("x", "y"):
            (root / "images" / sub).mkdir()
            ds._jpeg(root / "images" / sub / "a.jpg", 64, 48)
        doc["images"][0]["file_name"] = "x/a.jpg"
        doc["images"][1].update(file_name="y/a.jpg", width=64, height=48)
        expected = "would be written as images/train/a.jpg, like"
    elif case == "missing_split":
        split = "val"
        expected = "COCO annotation file for split 'val' not found"
    else:
        out = root / "images"
        expected = "images: is inside the input"
    doc_path.write_text(json.dumps(doc))
    capsys.readouterr()
    rc = _convert(root, "--type", "coco", "--to", "yolo", "--output", out, "--split", split,
                  *(["--overwrite"] if case == "into_source" else []))  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert expected in err.replace("\n", "")
    assert len(err.strip().splitlines()) <= 2  # one message (wrapped), no traceback
    assert out.exists() == (case == "into_source") and leftovers(tmp_path) == []
    assert leftovers(root) == [] and sorted(p.name for p in (root / "images").iterdir())[:3] == [
        "a.jpg", "b.jpg", "c.jpg"
    ]  # fmt: skip


def _outside_image(tmp_path: Path) -> Path:
    image = tmp_path / "elsewhere" / "a.jpg"
    image.parent.mkdir(exist_ok=True)
    ds._jpeg(image, 64, 48)
    return image


def _labelstudio_image(url):
    def setup(tmp_path: Path) -> tuple[Path, str]:
        root = ds.write_labelstudio(tmp_path / "ls")
        tasks = json.loads((root / "train.json").read_text())
        tasks[0]["data"]["image"] = url(tmp_path)
        (root / "train.json").write_text(json.dumps(tasks))
        shown = "/etc/passwd" if "passwd" in url(tmp_path) else tmp_path / "elsewhere" / "a.jpg"
        return root, f"{root / 'train.json'}: task 1: image {shown}"

    return setup


def _yolo_list_outside(tmp_path: Path) -> tuple[Path, str]:
    root = ds.write_yolo(tmp_path / "yolo")
    _outside_image(tmp_path)
    (root / "list.txt").write_text("images/train/b.jpg\n../elsewhere/a.jpg\n")
    (root / "data.yaml").write_text("train: list.txt\nnames: [cat, dog]\n")
    return root, f"{root / '../elsewhere/a.txt'}: image {root / '../elsewhere/a.jpg'}"


def _csv_outside(tmp_path: Path) -> tuple[Path, str]:
    root = ds.write_csv(tmp_path / "csv")
    _outside_image(tmp_path)
    path = root / "train.csv"
    path.write_text(path.read_text().replace("a.jpg", "../elsewhere/a.jpg"))
    return root, f"{path}:2: image {root / '../elsewhere/a.jpg'}"


# case -> (writes a dataset naming an image outside its folder: (root, the error's start),
#          the error with --allow-outside-root, or None when it then converts)
OUTSIDE_ROOT = {
    "labelstudio /etc/passwd": (
        _labelstudio_image(lambda tmp: "/etc/passwd"),
        "/etc/passwd: not a readable image",
    ),
    "labelstudio absolute path": (
        _labelstudio_image(lambda tmp: str(_outside_image(tmp))),
        None,
    ),
    "labelstudio local-files ..": (
        _labelstudio_image(lambda tmp: f"/data/local-files/?d={_outside_image(tmp)}"),
        None,
    ),
    "yolo list ..": (_yolo_list_outside, None),
    "csv ..": (_csv_outside, None),
}


@pytest.mark.parametrize("case", OUTSIDE_ROOT, ids=list(OUTSIDE_ROOT))
def test_cli_convert_refuses_images_outside_the_dataset(tmp_path, capsys, case):
    setup, allowed = OUTSIDE_ROOT[case]
    root, start = setup(tmp_path)
    out = tmp_path / "out"
    kind = case.split()[0]
    capsys.readouterr()
    assert _convert(root, "--type", kind, "--to", "voc", "--output", out) == 1
    err = capsys.readouterr().err.replace("\n", "")
    assert err.startswith(f"error: {start} is outside the dataset folder ")
    assert err.endswith("; use --allow-outside-root (allow_outside_root=True) to read it")
    assert not out.exists() and leftovers(tmp_path) == []
    rc = _convert(root, "--type", kind, "--to", "voc", "--output", out, "--allow-outside-root")
    err = capsys.readouterr().err
    if allowed is None:
        assert rc == 0 and (out / "JPEGImages" / "a.jpg").is_file()
    else:
        assert rc == 1 and err.startswith(f"error: {allowed}") and not out.exists()


def test_unknown_target_and_images_dir(tmp_path):
    root = ds.write_voc(tmp_path / "voc")
    with pytest.raises(DataError, match="unknown output format 'kitti'"):
        convert_dataset("voc", root, ["train"], "kitti", tmp_path / "out")
    with pytest.raises(OutputError, match="holds the input"):
        convert_dataset("voc", root / "Annotations", ["train"], "csv", root, overwrite=True)
    out = tmp_path / "csv"
    convert_dataset("voc", root, ["train"], "csv", out, images_dir=root / "JPEGImages")
    assert (out / "images" / "a.jpg").is_file()


@pytest.mark.parametrize("case", ["labelstudio absolute path", "csv .."])
def test_cli_transform_refuses_images_outside_the_dataset(tmp_path, capsys, case):
    """TFRecords hold the images' bytes: `dataset transform` keeps to the dataset's folders as
    `convert` does, unless asked."""
    setup, _ = OUTSIDE_ROOT[case]
    root, start = setup(tmp_path)
    out = tmp_path / "records"
    kind = case.split()[0]
    args = ["dataset", "transform", root, "--type", kind, "--output", out]
    capsys.readouterr()
    assert main([str(a) for a in args]) == 1
    err = capsys.readouterr().err.replace("\n", "")
    assert err.startswith(f"error: {start} is outside the dataset folder "), err
    assert not out.exists() and leftovers(tmp_path) == []
    assert main([*map(str, args), "--allow-outside-root"]) == 0
    assert (out / "dataset.json").is_file()


def _two_splits(tmp_path: Path, format: str) -> Path:
    """The tiny dataset as ``format`` with a train split (a, b) and a val split (c)."""
    voc = ds.write_voc(tmp_path / "voc-two")
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("c\n")
    parts = {split: read_annotations("voc", voc, split) for split in ("train", "val")}
    return write_dataset(format, parts, tmp_path / "src")


@pytest.mark.parametrize("source", list(SOURCES))
def test_every_split_is_converted_by_default(tmp_path, source, capsys):
    root = _two_splits(tmp_path, source)
    assert find_splits(source, root) == ["train", "val"]
    out = tmp_path / "out"
    assert _convert(root, "--type", source, "--to", "yolo", "--output", out) == 0
    printed = capsys.readouterr().out
    assert "train: 2 images" in printed and "val: 1 images" in printed
    data_yaml = (out / "data.yaml").read_text()
    assert "train: images/train\n" in data_yaml and "val: images/val\n" in data_yaml
    for split, names in {"train": ["a.jpg", "b.jpg"], "val": ["c.jpg"]}.items():
        records = read_annotations("yolo", out, split).records
        assert sorted(Path(r.filename).name for r in records) == names


def test_a_bad_later_split_leaves_nothing(tmp_path, capsys):
    root = _two_splits(tmp_path, "voc")
    (root / "ImageSets" / "Main" / "val.txt").write_text("c\nzzz\n")  # no zzz.xml
    out = tmp_path / "out"
    assert _convert(root, "--type", "voc", "--to", "yolo", "--output", out) == 1
    assert "zzz" in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path) == []


def test_raccoon_converts_every_split(tmp_path):
    root = SHARED / "raccoon"
    if not (root / "ImageSets" / "Main").is_dir():
        pytest.skip(f"shared data {root} is not available")
    splits = find_splits("voc", root)
    assert {"train", "val"} <= set(splits)
    before = {s: read_annotations("voc", root, s, on_invalid_box="drop") for s in splits}
    out = tmp_path / "yolo"
    convert_dataset("voc", root, None, "yolo", out, on_invalid_box="drop", link=True)
    data_yaml = (out / "data.yaml").read_text()
    for split in splits:
        assert f"{split}: images/{split}\n" in data_yaml
        assert len(read_annotations("yolo", out, split)) == len(before[split])
    assert len(before["train"]) + len(before["val"]) == len(list((root / "JPEGImages").iterdir()))
