"""kdetect.data.quality: tiny, near-duplicate and duplicate-image checks and class imbalance, on
records made by hand and on BCCD (which has double annotations)."""

from __future__ import annotations

import numpy as np
import pytest

from kdetect.data.quality import quality_report, quality_warnings
from kdetect.data.records import Annotations, Record
from tests.train_support import BCCD, has_bccd, kdetect


def _record(name, boxes, labels, image):
    return Record(
        filename=name,
        width=100,
        height=50,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        labels=np.array(labels, np.int32),
        difficult=np.zeros(len(labels), bool),
        image=image,
    )


def test_checks_by_hand():
    same = np.zeros((50, 100, 3), np.uint8)
    other = np.ones((50, 100, 3), np.uint8)
    records = [
        # box 1 is 3 px wide in the image but 6 px in a 100x200 frame (2x in x)
        _record("a.png", [[0, 0, 40, 40], [50, 0, 53, 20], [0, 0, 40, 39]], [0, 0, 0], same),
        _record("b.png", [[0, 0, 40, 40], [1, 1, 40, 40]], [0, 1], same),  # other class: fine
        _record("c.png", [[10, 10, 30, 20]] * 11 + [[0, 0, 5, 5]], [0] * 11 + [1], other),
    ]
    annotations = Annotations(["cat", "dog"], records)
    report = quality_report(annotations)
    assert report["tiny_boxes"] == [("a.png", 1)]
    pairs = report["near_duplicate_boxes"]
    assert ("a.png", 0, 2) in pairs and not any(p[0] == "b.png" for p in pairs)
    assert len([p for p in pairs if p[0] == "c.png"]) == 55  # 11 identical boxes: 11*10/2
    assert report["duplicate_images"] == [["a.png", "b.png"]]
    assert report["class_imbalance"] == pytest.approx(15 / 2)
    assert report["box_size"]["max"] == pytest.approx(40.0)
    in_frame = quality_report(annotations, frame=(100, 200))  # twice as large both ways
    assert in_frame["tiny_boxes"] == [] and in_frame["box_size"]["max"] == pytest.approx(80.0)
    lines = quality_warnings(report)
    assert len(lines) == 3  # tiny, near-duplicates, duplicate images; 7.5x is no imbalance
    assert lines[0].startswith("1 tiny boxes") and "a.png" in lines[0]
    assert "a.png = b.png" in lines[2]


def test_bccd_near_duplicates_are_reported(capsys):
    if not has_bccd():
        pytest.skip("../shared/data/bccd not available")
    assert kdetect("dataset", "inspect", BCCD) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "near-duplicate box pairs" in out and "warning: 5 near-duplicate box pairs" in out
    assert "class imbalance: RBC has" in out
