"""Evaluation with real Keras models: the fit() callback and ``kdetect evaluate MODEL``."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

from kdetect.cli import main  # noqa: E402
from kdetect.data.records import Annotations, Record  # noqa: E402
from kdetect.evaluation import EvaluationCallback, evaluate_offline  # noqa: E402


class GroundTruthModel(keras.Model):
    """A trainable toy whose ``predict`` returns the ground truth of the image it is shown (the
    image's first pixel is the record index), so validation mAP must be exactly 1."""

    def __init__(self, annotations: Annotations):
        super().__init__()
        self.annotations = annotations
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)

    def predict(self, images, verbose="auto"):
        out = {"boxes": [], "confidence": [], "labels": [], "num_detections": []}
        for image in np.asarray(images):
            record = self.annotations.records[int(image[0, 0, 0])]
            pad = 4 - len(record.labels)
            out["boxes"].append(np.pad(record.boxes, ((0, pad), (0, 0))))
            out["confidence"].append(np.pad(np.ones(len(record.labels)), (0, pad)))
            out["labels"].append(np.pad(record.labels, (0, pad), constant_values=-1))
            out["num_detections"].append(len(record.labels))
        return {key: np.stack(value) for key, value in out.items()}


def in_memory_split() -> Annotations:
    records = [
        Record(f"s{i}.png", 32, 32, [[2, 2, 20, 20 + i]], [i % 2], image=np.full((32, 32, 3), i))
        for i in range(4)
    ]
    return Annotations(["square", "circle"], records)


def test_callback_logs_val_map_inside_fit():
    annotations = in_memory_split()
    model = GroundTruthModel(annotations)
    model.compile(optimizer="sgd", loss="mse")
    callback = EvaluationCallback(annotations, metric="voc", every=2)
    x, y = np.zeros((8, 3), "float32"), np.zeros((8, 1), "float32")
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[callback])
    # Evaluated after epochs 2 and 3 (the last one always); logged into History.
    assert [epoch for epoch, _ in callback.results] == [1, 2]
    assert history.history["val_mAP"] == [1.0, 1.0]
    assert callback.results[-1][1]["per_class"] == {"square": 1.0, "circle": 1.0}


@keras.saving.register_keras_serializable(package="kdetect_tests")
class WholeImageDetector(keras.Model):
    """Detects one object of class 0 covering the whole image, score 1 (plus one padding row)."""

    def call(self, images):
        shape = ops.shape(images)
        h = ops.cast(shape[1], "float32")
        w = ops.cast(shape[2], "float32")
        box = ops.reshape(ops.stack([0.0, 0.0, w - 1.0, h - 1.0]), (1, 1, 4))
        ones = ops.ones_like(images[:, :1, 0, 0], dtype="float32")  # [B, 1]
        boxes = ops.concatenate([ones[:, :, None] * box, ops.zeros_like(ones)[:, :, None] * box], 1)
        return {
            "boxes": boxes,
            "confidence": ops.concatenate([ones, ones * 0.0], axis=1),
            "labels": ops.cast(ops.concatenate([ones * 0.0, -ones], axis=1), "int32"),
            "num_detections": ops.cast(ops.sum(ones, axis=1), "int32"),
        }


def test_cli_model_mode_matches_offline(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    rows = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
    for i, (w, h) in enumerate([(40, 30), (40, 30), (24, 36)]):
        Image.new("RGB", (w, h), (i, i, i)).save(data / f"im{i}.png")
        rows.append(f"im{i}.png,{w},{h},cat,0,0,{w - 1},{h - 1}")  # the whole image
        rows.append(f"im{i}.png,{w},{h},dog,2,2,{w // 2},{h // 2}")
    (data / "val.csv").write_text("\n".join(rows) + "\n")

    run = tmp_path / "run"
    run.mkdir()
    model = WholeImageDetector()
    model(np.zeros((1, 8, 8, 3), "float32"))
    model.save(run / "model.keras")
    (run / "classes.json").write_text(json.dumps(["cat", "dog"]))

    plots = tmp_path / "plots"
    args = ["evaluate", str(run), "--data", str(data), "--type", "csv", "--metric", "voc"]
    rc = main(args + ["--batch-size", "2", "--plots", str(plots)])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["per_class"] == {"cat": 1.0, "dog": 0.0}
    assert metrics["num_detections"] == 3
    assert sorted(p.name for p in plots.iterdir()) == [
        "confusion_matrix.png",
        "f1_curve.png",
        "pr_cat.png",
        "pr_dog.png",
        "precision_recall.png",
        "val_examples.png",
    ]

    # The same detections written as prediction lines give the same numbers offline.
    lines = [
        {
            "file": f"im{i}.png",
            "objects": [{"bbox": [0, 0, w - 1, h - 1], "label": "cat", "score": 1.0}],
        }
        for i, (w, h) in enumerate([(40, 30), (40, 30), (24, 36)])
    ]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("\n".join(json.dumps(line) for line in lines))
    assert evaluate_offline(data, pred, "voc", "csv") == metrics

    # A run directory without model.keras is a one-line error.
    assert main(["evaluate", str(tmp_path), "--data", str(data)]) == 1
    assert "no model.keras" in capsys.readouterr().err
