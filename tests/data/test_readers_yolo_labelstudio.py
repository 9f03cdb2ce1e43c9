"""The YOLO and Label Studio readers: layouts they accept and every kind of bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from kdetect.cli import main
from kdetect.data.inspect import detect_format
from kdetect.data.readers import read_annotations
from kdetect.data.readers.labelstudio import local_image
from kdetect.evaluation.groundtruth import guess_format
from kdetect.plumbing.errors import DataError
from tests.data_support import _jpeg, write_labelstudio, write_yolo

# --------------------------------------------------------------------------------------------
# YOLO


def test_yolo_names_mapping_path_key_and_image_list(tmp_path):
    root = write_yolo(tmp_path / "ds" / "yolo")
    (root / "data.yaml").write_text(
        "path: yolo\ntrain: list.txt\nval: images/train\nnames: {0: cat, 1: dog}\n"
    )
    (root.parent / "data.yaml").write_text((root / "data.yaml").read_text())
    (root / "list.txt").write_text("images/train/b.jpg\n\n./images/train/a.jpg\n")
    listed = read_annotations("yolo", root.parent / "data.yaml", "train")
    assert listed.classes == ["cat", "dog"]
    assert [Path(r.filename).name for r in listed.records] == ["b.jpg", "a.jpg"]
    np.testing.assert_array_equal(listed.records[0].boxes, [[0, 0, 20, 25]])
    folder = read_annotations("yolo", root.parent, "val")  # the folder holding data.yaml
    assert [Path(r.filename).name for r in folder.records] == ["a.jpg", "b.jpg", "c.jpg"]


def test_yolo_images_dir_and_empty_label_file(tmp_path):
    root = write_yolo(tmp_path / "yolo")
    (root / "labels" / "train" / "c.txt").write_text("\n")  # empty: a background image
    moved = tmp_path / "elsewhere"
    (root / "images" / "train").rename(moved)
    ann = read_annotations("yolo", root, "train", images_dir=moved)
    assert [len(r.labels) for r in ann.records] == [2, 1, 0]
    assert all(r.filename.startswith(str(moved)) for r in ann.records)


def _yolo_with_line(tmp_path, line: str) -> Path:
    root = write_yolo(tmp_path / "yolo")
    label = root / "labels" / "train" / "b.txt"
    label.write_text(label.read_text() + line + "\n")
    return root


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 0.5 0.2", "b.txt:2: expected 5 fields 'class cx cy w h', found 4"),
        ("0 0.5 0.5 0.2 0.2 0.9", "found 6 (a 6th field is a score: predictions, not labels)"),
        ("0 0.5 half 0.2 0.2", "b.txt:2: cy 'half' is not a number"),
        ("0 0.5 0.5 1.5 0.2", "b.txt:2: w 1.5 is outside [0, 1] (normalised)"),
        ("0 -0.1 0.5 0.1 0.2", "b.txt:2: cx -0.1 is outside [0, 1]"),
        ("2 0.5 0.5 0.2 0.2", "b.txt:2: class id 2 is not one of 0..1 (names in data.yaml)"),
        ("1.5 0.5 0.5 0.2 0.2", "b.txt:2: class id 1.5 is not one of 0..1"),
        ("cat 0.5 0.5 0.2 0.2", "b.txt:2: class id 'cat' is not a number"),
        ("nan 0.5 0.5 0.2 0.2", "b.txt:2: class id nan is not one of 0..1"),
        ("inf 0.5 0.5 0.2 0.2", "b.txt:2: class id inf is not one of 0..1"),
        ("-inf 0.5 0.5 0.2 0.2", "b.txt:2: class id -inf is not one of 0..1"),
    ],
)
def test_yolo_bad_label_lines(tmp_path, line, message):
    root = _yolo_with_line(tmp_path, line)
    with pytest.raises(DataError) as info:
        read_annotations("yolo", root, "train")
    text = str(info.value)
    assert message in text and "\n" not in text
    assert text.startswith(str(root / "labels" / "train" / "b.txt"))


def _list_file(content: bytes):
    def change(root: Path) -> Path:
        (root / "data.yaml").write_text("train: list.txt\nnames: [cat, dog]\n")
        (root / "list.txt").write_bytes(content)
        return root / "list.txt"

    return change


def _label_folder(root: Path) -> Path:
    label = root / "labels" / "train" / "b.txt"
    label.unlink()
    label.mkdir()
    return label


def _label_bytes(content: bytes):
    def change(root: Path) -> Path:
        (root / "labels" / "train" / "b.txt").write_bytes(content)
        return root / "labels" / "train" / "b.txt"

    return change


# name -> (changes the YOLO dataset and returns the file the error names, the rest of the line)
BAD_YOLO_FILES = {
    "list file not UTF-8": (_list_file(b"images/train/a.jpg\n\xff\xfe.jpg\n"), ": cannot read"),
    "label path is a folder": (_label_folder, ": label path is not a file"),
    "label file not UTF-8": (_label_bytes(b"0 0.5 0.5 0.2 0.2 \xe9\n"), ": cannot read"),
}


@pytest.mark.parametrize("case", BAD_YOLO_FILES, ids=list(BAD_YOLO_FILES))
def test_yolo_bad_files_are_one_line(tmp_path, case):
    root = write_yolo(tmp_path / "yolo")
    change, message = BAD_YOLO_FILES[case]
    named = change(root)
    with pytest.raises(DataError) as info:
        read_annotations("yolo", root, "train")
    assert str(info.value).startswith(f"{named}{message}") and "\n" not in str(info.value)


def test_yolo_label_without_image(tmp_path):
    root = write_yolo(tmp_path / "yolo")
    (root / "labels" / "train" / "zzz.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"labels/train/zzz\.txt: label file without an image"):
        read_annotations("yolo", root, "train")


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        (None, "data.yaml: YOLO data.yaml not found"),
        ("train: images/train\nnames: [cat, dog]\n", "no 'val' key (the splits given are train)"),
        ("train: images/train\nval: images/nope\nnames: [cat]\n", "'val' folder"),
        ("train: images/train\nval: images/train\n", "data.yaml: missing 'names'"),
        ("val: images/train\nnames: {0: cat, 2: dog}\n", "'names' ids must be 0..1"),
        ("val: images/train\nnames: {a: cat}\n", "'names' keys must be integer class ids"),
        ("val: images/train\nnames: [cat\n", "data.yaml: malformed YAML (line"),
        ("- just a list\n", "expected a mapping with 'names'"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcd", "bcde"))
            + "val: images/train\nnames: *e\n",
            "data.yaml: YAML anchors/aliases expand to more than 100000 values",
        ),
        ("val: images/train\nnames: &n [cat, *n]\n", "expand to more than 100000 values (or"),
    ],
)
def test_yolo_bad_data_yaml(tmp_path, yaml_text, message):
    root = write_yolo(tmp_path / "yolo")
    if yaml_text is None:
        (root / "data.yaml").unlink()
    else:
        (root / "data.yaml").write_text(yaml_text)
    with pytest.raises(DataError) as info:
        read_annotations("yolo", root, "val")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(root / "data.yaml"))


# --------------------------------------------------------------------------------------------
# Label Studio


def _tasks(root: Path) -> list:
    return json.loads((root / "train.json").read_text())


def _save(root: Path, tasks: list) -> None:
    (root / "train.json").write_text(json.dumps(tasks))


def _region(tasks, key, value, task=0, region=0):
    tasks[task]["annotations"][1]["result"][region]["value"][key] = value


BAD_REGIONS = {
    "two labels": (
        lambda t: _region(t, "rectanglelabels", ["dog", "cat"]),
        "task 1: region r0: region needs exactly one name in value.rectanglelabels",
    ),
    "rotated": (lambda t: _region(t, "rotation", 30), "task 1: region r0: rotated rectangle"),
    "x not a number": (
        lambda t: _region(t, "x", "left"),
        "task 1: region r0: region value needs numbers x, y, width, height",
    ),
    "no size": (
        lambda t: t[0]["annotations"][1]["result"][0].pop("original_width"),
        "task 1: region r0: region has no original_width/original_height",
    ),
    "sizes differ": (
        lambda t: t[0]["annotations"][1]["result"][1].update(original_width=65),
        "task 1: regions give different image sizes (64x48, 65x48)",
    ),
    "width a string": (
        lambda t: t[0]["annotations"][1]["result"][0].update(original_width="64"),
        "task 1: region r0: original_width must be a positive number, got '64'",
    ),
    "height a list": (
        lambda t: t[0]["annotations"][1]["result"][0].update(original_height=[48]),
        "task 1: region r0: original_height must be a positive number, got [48]",
    ),
    "width not finite": (
        lambda t: t[0]["annotations"][1]["result"][0].update(original_width=float("inf")),
        "task 1: region r0: original_width must be a positive number, got inf",
    ),
    "rotation a list": (
        lambda t: _region(t, "rotation", [30]),
        "task 1: region r0: rotation must be a number, got [30]",
    ),
    "no image": (lambda t: t[1]["data"].pop("image"), "task 2: missing data.image"),
    "not a task": (lambda t: t.append(7), "train.json: task [3]: expected a JSON object"),
    "annotations not a list": (
        lambda t: t[1].update(annotations={"result": []}),
        "task 2: 'annotations' must be a list",
    ),
}


@pytest.mark.parametrize("case", BAD_REGIONS, ids=list(BAD_REGIONS))
def test_labelstudio_bad_tasks_name_file_and_task(tmp_path, case):
    root = write_labelstudio(tmp_path / "ls")
    tasks = _tasks(root)
    change, message = BAD_REGIONS[case]
    change(tasks)
    _save(root, tasks)
    with pytest.raises(DataError) as info:
        read_annotations("labelstudio", root, "train")
    assert str(info.value).startswith(str(root / "train.json"))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_labelstudio_not_a_task_list_and_missing_image(tmp_path):
    root = write_labelstudio(tmp_path / "ls")
    _save(root, {"tasks": []})
    with pytest.raises(DataError, match=r"train\.json: expected a JSON list of tasks"):
        read_annotations("labelstudio", root, "train")
    root = write_labelstudio(tmp_path / "ls2")
    (root / "images" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"train\.json: task 2: image .*b\.jpg not found"):
        read_annotations("labelstudio", root, "train")


def test_labelstudio_skips_unlabelled_tasks(tmp_path, caplog):
    root = write_labelstudio(tmp_path / "ls")
    tasks = _tasks(root)
    tasks[0]["annotations"] = [a | {"was_cancelled": True} for a in tasks[0]["annotations"]]
    tasks[1].pop("annotations")
    _save(root, tasks)
    with caplog.at_level(logging.WARNING):
        ann = read_annotations("labelstudio", root, "train")
    assert [Path(r.filename).name for r in ann.records] == ["c.jpg"]
    assert "2 task(s) without annotations skipped" in caplog.text


def test_labelstudio_image_urls(tmp_path):
    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    _jpeg(images / "sub" / "x y.jpg")
    _jpeg(images / "up.jpg")
    found = str(images / "sub" / "x y.jpg")
    assert local_image("/data/local-files/?d=sub/x%20y.jpg", tmp_path, images) == found
    assert local_image("/data/local-files/?d=other/root/x%20y.jpg", tmp_path, images / "sub") == (
        found
    )
    up = str(images / "up.jpg")
    assert local_image("/data/upload/12/1f2e3d4c-up.jpg", tmp_path, images) == up
    assert local_image("https://host/a/up.jpg?sig=1", tmp_path, images) == up
    assert local_image(found, tmp_path, None) == found  # an absolute path
    assert local_image("imgs/up.jpg", tmp_path, None) == str(images / "up.jpg")  # beside the JSON
    with pytest.raises(DataError, match="local-files URL without"):
        local_image("/data/local-files/?x=1", tmp_path, images)


def test_format_guessing_and_inspect_know_yolo(tmp_path, capsys):
    root = write_yolo(tmp_path / "yolo")
    assert detect_format(root) == detect_format(root / "data.yaml") == "yolo"
    assert guess_format(root, "train") == guess_format(root / "data.yaml", "train") == "yolo"
    assert main(["dataset", "inspect", str(root)]) == 0
    assert "(yolo, split train)" in capsys.readouterr().out.replace("\n", "")
    ls = write_labelstudio(tmp_path / "ls")
    assert main(["dataset", "inspect", str(ls / "train.json"), "--type", "labelstudio"]) == 0
