"""Training reads the YOLO layout: a tiny YOLO dataset trains two steps through ``kdetect train``
(Label Studio goes through the same ``read_annotations``; its records equal VOC's in
test_data_readers.py)."""

from __future__ import annotations

import json

from tests import data_support
from tests.train_support import SHAPES, TINY, kdetect, set_args


def test_tiny_recipe_trains_on_yolo_data(tmp_path):
    root = data_support.write_yolo(tmp_path / "yolo")
    run = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith(("data.shapes", "eval."))] + [
        "data.format=yolo",
        f"data.root={root}",
        "data.val_split=null",
        "train.steps_per_epoch=2",
        "train.checkpoint.best=none",
        "eval.every=0",
        "eval.samples=0",
    ]
    assert kdetect("train", SHAPES, "--run-dir", run, *set_args(overrides)) == 0
    assert json.loads((run / "classes.json").read_text())["classes"] == ["cat", "dog"]
    assert (run / "model.keras").is_file()
    meta = json.loads((run / "kdetect.json").read_text())
    assert meta["status"] == "finished"
