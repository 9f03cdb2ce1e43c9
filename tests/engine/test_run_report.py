"""After `kdetect train`, without flags: metrics.json with the best-F1 threshold (the run's default
--min-score), the evaluation pictures in plots/, and every picture of the run in TensorBoard."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from kdetect.engine.run_report import threshold_note
from kdetect.evaluation import api
from kdetect.runs import DEFAULT_MIN_SCORE, best_min_score, inspect_run
from tests.train_support import SHAPES, TINY, kdetect, set_args, tiny_run

EVALUATION_PICTURES = ("f1_curve", "confusion_matrix", "val_examples", "precision_recall")


def test_training_leaves_metrics_and_pictures(tmp_path_factory):
    run = tiny_run(tmp_path_factory)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metric"] == "voc" and metrics["num_images"] == 4  # the recipe's eval.metric
    assert 0.0 <= metrics["f1"]["threshold"] <= 1.0
    # What predict and serve take as the run's default score threshold (test_thresholds.py
    # follows it through `kdetect predict`).
    best = metrics["f1"]
    expected = best["threshold"] if best["f1"] > 0 else DEFAULT_MIN_SCORE
    assert best_min_score(inspect_run(run))[0] == expected
    names = {p.stem for p in (run / "plots").glob("*.png")}
    assert set(EVALUATION_PICTURES) <= names
    assert {p.stem for p in (run / "plots").glob("pr_*.png")}  # one curve per class seen
    for stem in EVALUATION_PICTURES:
        with Image.open(run / "plots" / f"{stem}.png") as image:
            assert image.format == "PNG" and min(image.size) >= 400


def test_the_last_epochs_detections_are_scored_not_predicted_again(tmp_path, monkeypatch):
    """The final report scores the weights the last epoch's validation mAP just scored: the
    validation images go through the model once, and metrics.json agrees with that epoch."""
    calls = []
    predict = api.predict_detections

    def counted(*args, **kwargs):
        calls.append(args[1])
        return predict(*args, **kwargs)

    monkeypatch.setattr(api, "predict_detections", counted)
    run = tmp_path / "run"
    assert kdetect("train", SHAPES, "--run-dir", run, *set_args(TINY)) == 0
    assert len(calls) == 1 and len(calls[0]) == 4  # TINY: one epoch, 4 validation images
    metrics = json.loads((run / "metrics.json").read_text())
    last = (run / "history.csv").read_text().splitlines()
    columns = dict(zip(last[0].split(","), last[-1].split(","), strict=True))
    assert float(columns["val_mAP"]) == pytest.approx(metrics["mAP"], abs=1e-6)
    assert {p.stem for p in (run / "plots").glob("*.png")} >= set(EVALUATION_PICTURES)


def test_the_reported_threshold_is_the_one_predict_and_serve_use():
    good = {"f1": {"f1": 0.8123, "threshold": 0.43}}
    assert threshold_note(good) == (
        "best F1 0.812 at score 0.43 (the default --min-score of predict and serve)"
    )
    # F1 0 everywhere: predict and serve keep the default (best_min_score), so the note says so
    # instead of naming score 1.00.
    nothing = {"f1": {"f1": 0.0, "threshold": 1.0}}
    note = threshold_note(nothing)
    assert (
        note
        == f"best F1 0.000: no detection right yet, so predict and serve use {DEFAULT_MIN_SCORE}"
    )
    assert "1.00" not in note


def test_pictures_reach_tensorboard(tmp_path_factory):
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tensorboard")
    run = tiny_run(tmp_path_factory)
    events = sorted((run / "logs" / "plots").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file for the pictures"
    tags, shapes = set(), {}
    for path in events:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags.add(value.tag)
                # An image summary holds [width, height, PNG bytes] as a string tensor.
                width, height = (int(v) for v in value.tensor.string_val[:2])
                shapes[value.tag] = (width, height)
    expected = {"results", "labels", *EVALUATION_PICTURES}
    assert expected <= tags, sorted(tags)
    with Image.open(run / "results.png") as image:
        assert shapes["results"] == image.size
