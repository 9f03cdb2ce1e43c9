"""``kdetect predict --format``: each format imports into its tool (pycocotools for COCO, our
own readers for VOC, YOLO and Label Studio) and gives the boxes of the JSON lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kdetect.apps.predict_formats import (
    check_images,
    coco_results,
    parse_options,
    write_predictions,
)
from kdetect.data.readers import read_annotations
from kdetect.data.readers.common import build_annotations
from kdetect.data.readers.labelstudio import read_tasks
from kdetect.plumbing.errors import DataError, KdetectError
from tests import data_support as ds
from tests.train_support import kdetect, tiny_run

CLASSES = ["cat", "dog"]


def truth_lines(root: Path) -> list[dict]:
    """Result lines that predict the tiny COCO ground truth exactly (scores 0.9, 0.8, ...)."""
    truth = read_annotations("coco", root, "train")
    lines = []
    for record in truth.records:
        objects = [
            {"bbox": [float(v) for v in box], "label": CLASSES[label], "label_id": int(label),
             "score": round(0.9 - 0.1 * k, 4)}
            for k, (box, label) in enumerate(zip(record.boxes, record.labels, strict=True))
        ]  # fmt: skip
        lines.append({"file": record.filename, "width": record.width, "height": record.height,
                      "objects": objects})  # fmt: skip
    return lines


def boxes_of(lines) -> dict[str, tuple]:
    return {
        Path(line["file"]).name: (
            np.array([o["bbox"] for o in line["objects"]], np.float32).reshape(-1, 4),
            [o["label_id"] for o in line["objects"]],
        )
        for line in lines
    }


def assert_boxes_match(lines, annotations, atol=0.0):
    expected = boxes_of(lines)
    got = {Path(r.filename).name: r for r in annotations.records}
    assert got.keys() == expected.keys()
    for name, (boxes, labels) in expected.items():
        np.testing.assert_allclose(got[name].boxes, boxes, atol=atol, rtol=0, err_msg=name)
        assert got[name].labels.tolist() == labels, name


def test_coco_results_evaluate_with_pycocotools(tmp_path):
    root = ds.write_coco(tmp_path / "coco")
    gt_file = root / "annotations" / "instances_train.json"
    doc = json.loads(gt_file.read_text())
    for ann in doc["annotations"]:  # COCOeval needs the area
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    gt_file.write_text(json.dumps(doc))
    out = tmp_path / "results.json"
    write_predictions("coco", truth_lines(root), CLASSES, out, {"ground_truth": str(gt_file)})
    gt = COCO(str(gt_file))
    evaluation = COCOeval(gt, gt.loadRes(str(out)), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # the ground truth predicted: AP 1
    results = json.loads(out.read_text())
    assert {r["category_id"] for r in results} == {10, 11}  # the ground truth's ids
    assert not (tmp_path / "results_images.json").exists()


def test_coco_results_without_ground_truth(tmp_path):
    root = ds.write_coco(tmp_path / "coco")
    out = tmp_path / "results.json"
    written = write_predictions("coco", truth_lines(root), CLASSES, out, {})
    assert written == [out, tmp_path / "results_images.json"]
    images = COCO(str(written[1]))
    loaded = images.loadRes(str(out))
    assert sorted(loaded.getImgIds()) == [1, 2, 3]
    assert [c["name"] for c in images.loadCats(images.getCatIds())] == CLASSES
    first = loaded.loadAnns(loaded.getAnnIds(imgIds=[1]))
    assert sorted(a["category_id"] for a in first) == [1, 2]  # label id + 1
    assert sorted(a["bbox"] for a in first)[0] == [1.0, 2.0, 29.0, 38.0]


def test_coco_results_refuse_unknown_image_or_class(tmp_path):
    root = ds.write_coco(tmp_path / "coco")
    truth = json.loads((root / "annotations" / "instances_train.json").read_text())
    lines = truth_lines(root)
    lines[0]["file"] = "elsewhere/zebra.jpg"
    with pytest.raises(DataError, match=r"gt\.json: no image 'zebra\.jpg' in the ground truth"):
        coco_results(lines, CLASSES, truth, "gt.json")
    lines = truth_lines(root)
    lines[1]["objects"][0]["label"] = "horse"
    with pytest.raises(DataError, match="gt.json: no category 'horse'"):
        coco_results(lines, CLASSES, truth, "gt.json")


def test_voc_and_yolo_read_back_with_the_dataset_readers(tmp_path):
    root = ds.write_coco(tmp_path / "coco")
    lines = truth_lines(root)
    images = root / "images"
    write_predictions("voc", lines, CLASSES, tmp_path / "voc", {})
    voc = read_annotations("voc", tmp_path / "voc", "predict", classes=CLASSES, images_dir=images)
    assert_boxes_match(lines, voc)
    write_predictions("yolo", lines, CLASSES, tmp_path / "yolo", {})
    yolo = read_annotations("yolo", tmp_path / "yolo", "predict", images_dir=images)
    assert yolo.classes == CLASSES
    assert_boxes_match(lines, yolo, atol=1e-3)
    write_predictions("yolo", lines, CLASSES, tmp_path / "conf", {"save_conf": "true"})
    assert (tmp_path / "conf" / "labels" / "a.txt").read_text().split("\n")[1].endswith(" 0.8")
    with pytest.raises(DataError, match="found 6 .a 6th field is a score"):
        read_annotations("yolo", tmp_path / "conf", "predict", images_dir=images)


def test_labelstudio_predictions_read_back(tmp_path):
    root = ds.write_coco(tmp_path / "coco")
    lines = truth_lines(root)
    out = tmp_path / "tasks.json"
    write_predictions("labelstudio", lines, CLASSES, out, {"image_root": str(root)}, "run@1")
    tasks = json.loads(out.read_text())
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=images/a.jpg"
    prediction = tasks[0]["predictions"][0]
    assert prediction["model_version"] == "run@1" and prediction["score"] == 0.85
    assert [r["score"] for r in prediction["result"]] == [0.9, 0.8]
    raw = read_tasks(out, root, "predictions")
    assert_boxes_match(lines, build_annotations(raw, CLASSES, "error")[0], atol=1e-3)
    assert read_tasks(out, root, "annotations") == []  # predictions are not labels


def test_labelstudio_image_root_must_hold_the_images(tmp_path):
    root = ds.write_coco(tmp_path / "coco")
    lines = truth_lines(root)
    out = tmp_path / "tasks.json"
    elsewhere = tmp_path / "elsewhere"
    image = lines[0]["file"]
    message = f"--format-option image_root={elsewhere}: the image {image} is not inside it "
    with pytest.raises(KdetectError, match=re.escape(message) + r"\(Label Studio .*\)$"):
        write_predictions("labelstudio", lines, CLASSES, out, {"image_root": str(elsewhere)})
    with pytest.raises(KdetectError, match=re.escape(message)):  # before predicting, in the CLI
        check_images("labelstudio", {"image_root": str(elsewhere)}, [image])
    assert not out.exists()
    check_images("labelstudio", {"image_root": str(root / "images")}, [image])
    check_images("labelstudio", {"image_root": str(root)}, [image])
    check_images("coco", {}, [image])


def test_format_options_are_checked():
    assert parse_options("coco", ["ground_truth=a.json"]) == {"ground_truth": "a.json"}
    with pytest.raises(KdetectError, match="--format-option 'save_conf=1': expected KEY=VALUE"):
        parse_options("coco", ["save_conf=1"])
    assert parse_options("yolo", ["save_conf=YES"]) == {"save_conf": "YES"}
    with pytest.raises(KdetectError) as info:
        parse_options("yolo", ["save_conf=maybe"])
    assert str(info.value) == (
        '--format-option save_conf: expected true or false (yes/no, 1/0), got "maybe"'
    )
    with pytest.raises(KdetectError, match=r"\(none\)"):
        parse_options("voc", ["x"])
    twins = [{"file": f"{d}/a.jpg", "width": 8, "height": 8, "objects": []} for d in "xy"]
    with pytest.raises(DataError, match="same file name as"):
        write_predictions("voc", twins, CLASSES, "unused", {})


# --------------------------------------------------------------------------------------------
# through the CLI, on the tiny trained run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def _jsonl(run, tmp_path, capsys) -> list[dict]:
    out = tmp_path / "lines.jsonl"
    assert kdetect("predict", run, run / "samples", "--min-score", "0", "-o", out) == 0
    capsys.readouterr()
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_cli_formats_give_the_boxes_of_jsonl(run, tmp_path, capsys):
    lines = _jsonl(run, tmp_path, capsys)
    classes = ["circle", "rectangle", "triangle"]
    base = ["predict", run, run / "samples", "--min-score", "0", "--format"]
    assert kdetect(*base, "voc", "-o", tmp_path / "voc") == 0
    voc = read_annotations("voc", tmp_path / "voc", "predict", classes, "error", run / "samples")
    assert_boxes_match(lines, voc)
    assert kdetect(*base, "yolo", "-o", tmp_path / "yolo") == 0
    yolo = read_annotations("yolo", tmp_path / "yolo", "predict", images_dir=run / "samples")
    assert_boxes_match(lines, yolo, atol=1e-3)
    assert kdetect(*base, "labelstudio", "-o", tmp_path / "ls.json") == 0
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert tasks[0]["predictions"][0]["model_version"].startswith(f"{run.name}@")
    raw = read_tasks(tmp_path / "ls.json", None, "predictions")
    assert_boxes_match(lines, build_annotations(raw, classes, "error")[0], atol=1e-3)
    assert kdetect(*base, "coco", "-o", tmp_path / "coco.json") == 0
    loaded = COCO(str(tmp_path / "coco_images.json")).loadRes(str(tmp_path / "coco.json"))
    assert len(loaded.getAnnIds()) == sum(len(line["objects"]) for line in lines)


def test_cli_format_errors_exit_1_with_one_line(run, tmp_path, capsys):
    base = ["predict", run, run / "samples", "--format"]
    capsys.readouterr()
    for argv, message in [
        ([*base, "voc"], "--format voc: needs --output PATH"),
        ([*base, "yolo", "-o", tmp_path, "--format-option", "x=1"], "--format-option 'x=1'"),
        ([*base, "voc", "-o", run.parent], "holds the input"),
        ([*base, "coco", "-o", tmp_path / "r.json", "--format-option",
          f"ground_truth={tmp_path / 'none.json'}"], "none.json: cannot read annotation file"),
    ]:  # fmt: skip
        assert kdetect(*argv) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert kdetect(*base, "yolo", "-o", tmp_path / "full") == 1
    assert "folder is not empty; use --overwrite" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert kdetect(*base, "yolo", "-o", tmp_path / "full", "--overwrite") == 0
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["data.yaml", "labels"]
