"""``kdetect evaluate`` offline mode: golden numbers through the CLI, outputs, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdetect.cli import main

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
GOLDEN = DATA / "coco_eval_golden"
GT_JSON = GOLDEN / "instances_val2014_100.json"
RESULTS = GOLDEN / "instances_val2014_fakebbox100_results.json"
EXPECTED = {
    "AP": 0.5045806987249628,
    "AP50": 0.6969727247299577,
    "AP75": 0.5729816669904824,
    "APs": 0.5856257209410443,
    "APm": 0.5193996948036719,
    "APl": 0.5013978986347466,
    "AR1": 0.38681277964578054,
    "AR10": 0.5936795762842003,
    "AR100": 0.595352982877607,
    "ARs": 0.6398109626113442,
    "ARm": 0.5664205978994309,
    "ARl": 0.5642905982905982,
}


@pytest.mark.skipif(not GT_JSON.is_file(), reason="coco_eval_golden absent")
def test_cli_reproduces_golden_numbers(tmp_path, capsys):
    output = tmp_path / "out" / "metrics.json"
    plots = tmp_path / "plots"
    args = ["evaluate", "--ground-truth", str(GT_JSON), "--type", "coco", "--split", "val"]
    args += ["--detections", str(RESULTS), "--metric", "coco", "--output", str(output)]
    rc = main(args + ["--plots", str(plots)])
    assert rc == 0
    metrics = json.loads(output.read_text())
    for key, value in EXPECTED.items():
        assert abs(metrics[key] - value) <= 1e-6, key
    assert metrics["metric"] == "coco" and metrics["num_images"] == 100
    assert len(metrics["per_class"]) == 80
    shown = capsys.readouterr().out
    assert "AR100" in shown and "0.5954" in shown and "toothbrush" in shown
    pngs = sorted(plots.glob("pr_*.png"))
    assert 0 < len(pngs) <= 80
    from PIL import Image

    with Image.open(pngs[0]) as image:
        assert image.size == (480, 400)


def write_voc_style_dataset(root: Path) -> None:
    """A two-image CSV dataset (no images needed offline)."""
    root.mkdir()
    rows = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
    rows += ["a.jpg,100,80,cat,10,10,50,50", "a.jpg,100,80,dog,60,20,90,70"]
    rows += ["b.jpg,100,80,cat,5,5,30,30"]
    (root / "val.csv").write_text("\n".join(rows) + "\n")


def prediction(file: str, *objects) -> str:
    return json.dumps({"file": file, "width": 100, "height": 80, "objects": list(objects)})


def test_cli_voc_metrics_on_csv_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    write_voc_style_dataset(data)
    dets = tmp_path / "pred.jsonl"
    dets.write_text(
        "\n".join(
            [
                prediction(
                    "images/a.jpg",  # matched by basename
                    {"bbox": [10, 10, 50, 50], "label": "cat", "score": 0.9},
                    {"bbox": [0, 0, 5, 5], "label_id": 1, "score": 0.8},
                ),
                "",
                prediction("b.jpg", {"bbox": [5, 5, 30, 30], "label": "cat", "score": 0.7}),
            ]
        )
    )
    output = tmp_path / "metrics.json"
    rc = main(
        ["evaluate", "--ground-truth", str(data), "--detections", str(dets)]
        + ["--type", "csv", "--metric", "voc", "--output", str(output)]
    )
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads(output.read_text())
    assert metrics["metric"] == "voc"
    assert metrics["per_class"] == {"cat": 1.0, "dog": 0.0}
    assert metrics["mAP"] == 0.5
    assert metrics["num_images"] == 2 and metrics["num_detections"] == 3
    # Without --format and --metric: guessed (a folder with val.csv -> csv; voc07).
    assert main(["evaluate", "--ground-truth", str(data), "--detections", str(dets)]) == 0
    assert "voc07" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "detections file not found"),
        ("malformed", "pred.jsonl:2: malformed JSON line"),
        ("unknown_class", "unknown class 'horse'"),
        ("unknown_file", "not in the ground truth"),
        ("no_score", "missing or non-numeric 'score'"),
        ("no_ground_truth", "ground truth not found"),
        ("nothing", "nothing to evaluate"),
        ("no_objects", "pred.jsonl:2: missing 'objects' (use [] for an image with no detections)"),
        ("missing_run", "nowhere: no such run directory or model file"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_1(tmp_path, capsys, case, expected):
    data = tmp_path / "data"
    write_voc_style_dataset(data)
    dets = tmp_path / "pred.jsonl"
    good = prediction("a.jpg", {"bbox": [10, 10, 50, 50], "label": "cat", "score": 0.9})
    lines = {
        "malformed": [good, '{"file": "b.jpg", "objects": [}'],
        "unknown_class": [
            prediction("a.jpg", {"bbox": [1, 1, 5, 5], "label": "horse", "score": 1})
        ],
        "unknown_file": [prediction("zzz.jpg")],
        "no_score": [prediction("a.jpg", {"bbox": [1, 1, 5, 5], "label": "cat"})],
        "no_objects": [good, '{"file": "b.jpg"}'],
    }
    if case != "missing":
        dets.write_text("\n".join(lines.get(case, [good])) + "\n")
    args = ["evaluate", "--ground-truth", str(data), "--type", "csv", "--detections", str(dets)]
    if case == "no_ground_truth":
        args[2] = str(tmp_path / "nowhere")
    if case == "nothing":
        args = ["evaluate"]
    if case == "missing_run":  # not "give the dataset with --data"
        args = ["evaluate", str(tmp_path / "nowhere")]
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert "Traceback" not in err
