"""kdetect.evaluation.thresholds: F1 against the score threshold and the confusion matrix, on
cases worked out by hand; and the run-level loop: evaluate -> metrics.json -> predict's default."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from kdetect.evaluation.thresholds import THRESHOLDS, confusion_matrix, f1_curves
from tests.train_support import kdetect, tiny_run, trained_shapes_run

BOX_A = [0, 0, 10, 10]
BOX_B = [20, 20, 30, 30]
BOX_C = [50, 50, 60, 60]


def _gt(boxes, labels):
    return (np.array(boxes, float), np.array(labels), np.zeros(len(labels), bool))


def _det(boxes, scores, labels):
    return (np.array(boxes, float), np.array(scores, float), np.array(labels))


def test_f1_of_one_class_by_hand():
    # Two objects; detections: hit 0.9, miss 0.6, hit 0.3.
    gt = [_gt([BOX_A, BOX_B], [0, 0])]
    det = [_det([BOX_A, BOX_C, BOX_B], [0.9, 0.6, 0.3], [0, 0, 0])]
    f1 = f1_curves(["x"], gt, det)
    curve = dict(zip(THRESHOLDS.tolist(), f1["per_class"]["x"]["f1"], strict=True))
    assert curve[0.0] == pytest.approx(0.8) and curve[0.3] == pytest.approx(0.8)  # P 2/3, R 1
    assert curve[0.31] == pytest.approx(0.5)  # P 1/2, R 1/2
    assert curve[0.7] == pytest.approx(2 / 3)  # P 1, R 1/2
    assert curve[0.95] == 0.0
    # The plateau's highest threshold wins.
    assert f1["best"] == pytest.approx(
        {"threshold": 0.3, "f1": 0.8, "precision": 2 / 3, "recall": 1}
    )


def test_f1_mean_skips_classes_without_ground_truth():
    gt = [_gt([BOX_A], [0])]
    det = [_det([BOX_A, BOX_B], [0.8, 0.9], [0, 1])]  # class 1 has no objects
    f1 = f1_curves(["a", "b"], gt, det)
    assert f1["best"]["threshold"] == 0.8 and f1["best"]["f1"] == pytest.approx(1.0)
    assert f1_curves(["a"], [_gt(np.zeros((0, 4)), [])], [_det(np.zeros((0, 4)), [], [])])[
        "best"
    ] == {"threshold": 0.5, "f1": 0.0, "precision": 0.0, "recall": 0.0}


def test_confusion_matrix_by_hand():
    gt = [_gt([BOX_A, BOX_B, BOX_C], [0, 1, 1])]
    # A found as 0 (right), B found as 0 (confused), a 1 where nothing is (background), C missed,
    # and one detection under the threshold (ignored).
    det = [_det([BOX_A, BOX_B, [80, 80, 90, 90], BOX_C], [0.9, 0.8, 0.7, 0.1], [0, 0, 1, 1])]
    matrix = confusion_matrix(2, gt, det, threshold=0.5)
    expected = np.zeros((3, 3), int)
    expected[0, 0] = 1  # true 0, predicted 0
    expected[1, 0] = 1  # true 1, predicted 0
    expected[2, 1] = 1  # background predicted as 1
    expected[1, 2] = 1  # true 1 missed
    np.testing.assert_array_equal(matrix, expected)


def test_evaluate_writes_the_threshold_and_pictures_predict_uses_it(
    tmp_path_factory, tmp_path, capsys
):
    # The trained shapes run: its detections are right often enough for a positive best F1.
    run = tmp_path / "run"
    shutil.copytree(trained_shapes_run(tmp_path_factory), run)
    assert kdetect("evaluate", run) == 0
    best = json.loads((run / "metrics.json").read_text())["f1"]
    assert set(best) == {"threshold", "f1", "precision", "recall"} and 0 <= best["threshold"] <= 1
    assert best["f1"] > 0.5
    for name in ("f1_curve.png", "confusion_matrix.png", "val_examples.png"):
        with Image.open(run / "plots" / name) as image:
            assert image.format == "PNG" and min(image.size) >= 400
    capsys.readouterr()
    image = sorted((tiny_run(tmp_path_factory) / "samples").glob("*.png"))[0]  # a shapes image
    assert kdetect("predict", run, image, "--output", tmp_path / "p.jsonl") == 0
    assert f"min score {best['threshold']:.2f} (best F1" in capsys.readouterr().err
    row = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert all(o["score"] >= best["threshold"] for o in row["objects"])


def test_a_model_that_finds_nothing_right_keeps_the_default_threshold(tmp_path_factory, tmp_path):
    """F1 0 at every threshold (the best is then the highest, 1.0) says nothing about scores:
    predict and serve keep the default instead of hiding every detection."""
    from kdetect.runs import DEFAULT_MIN_SCORE, best_min_score, inspect_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run(tmp_path_factory), run)
    best = {"threshold": 1.0, "f1": 0.0, "precision": 0.0, "recall": 0.0}
    (run / "metrics.json").write_text(json.dumps({"metric": "voc", "f1": best}))
    assert best_min_score(inspect_run(run)) == (DEFAULT_MIN_SCORE, "default")
    best.update(threshold=0.35, f1=0.6)
    (run / "metrics.json").write_text(json.dumps({"metric": "voc", "f1": best}))
    assert best_min_score(inspect_run(run))[0] == 0.35
