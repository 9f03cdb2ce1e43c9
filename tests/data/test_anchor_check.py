"""The anchor check before training: coverage of the boxes by the recipe's anchors, a warning
with a better setting when they fit badly (a dataset of long thin boxes), and no warning for the
shapes dataset the recipe is made for."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kdetect.data.anchor_fit import anchor_coverage, best_anchor_iou, suggest_anchors
from tests.train_support import SHAPES, kdetect


def _thin_boxes_dataset(root, count=12, seed=0):
    """128x128 images, each with three long thin boxes (about 90x6 px, half of them upright)."""
    rng = np.random.default_rng(seed)
    rows = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
    for i in range(count):
        name = f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), np.uint8)).save(root / name)
        for k in range(3):
            x, y = rng.integers(5, 30, 2)
            length, width = int(rng.integers(80, 95)), int(rng.integers(4, 8))
            upright = k % 2 == 1
            w, h = (width, length) if upright else (length, width)
            cls = "pole" if upright else "rail"
            rows.append(f"{name},128,128,{cls},{x},{y},{x + w},{y + h}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def test_best_anchor_iou_and_coverage_by_hand():
    anchors = [np.array([[0, 0, 10, 10], [0, 0, 20, 20]], np.float32)]
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 20], [100, 100, 110, 110]], np.float32)
    best = best_anchor_iou(boxes, anchors)
    np.testing.assert_allclose(best, [1.0, 0.5, 0.0])
    report = anchor_coverage(best, np.array([0, 0, 1]), ["a", "b", "c"], 0.7, 0.3)
    assert report["covered"] == pytest.approx(2 / 3) and report["fg"] == pytest.approx(1 / 3)
    assert report["per_class"]["a"] == {"covered": 1.0, "fg": 0.5, "boxes": 2}
    assert report["per_class"]["c"] == {"covered": None, "fg": None, "boxes": 0}


def test_suggestion_raises_the_coverage_of_thin_boxes():
    from kdetect.ops.anchors import feature_map_anchors

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 30, (60, 2))
    boxes = np.concatenate([xy, xy + [90, 6]], axis=1)  # 90 x 6
    feature_sizes = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]

    def anchors_for(sizes, ratios):
        return [
            np.asarray(a) for a in feature_map_anchors((128, 128), feature_sizes, sizes, ratios)
        ]

    current = ([[16], [32], [64], [128], [256]], [0.5, 1.0, 2.0])
    before = np.mean(best_anchor_iou(boxes, anchors_for(*current)) >= 0.3)
    sizes, ratios, after = suggest_anchors(boxes, anchors_for, current)
    assert before < 0.5 and after > 0.9 and min(ratios) < 0.2
    assert np.mean(best_anchor_iou(boxes, anchors_for(sizes, ratios)) >= 0.3) == after


def test_dataset_inspect_with_a_recipe_warns_about_thin_boxes(tmp_path, capsys):
    data = _thin_boxes_dataset(tmp_path)
    assert kdetect("dataset", "inspect", data, "--recipe", SHAPES) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "anchor coverage in the 128x128 frame" in out
    assert "warning: only" in out and "--set model.aspect_ratios=" in out
    covered = float(out.split("covers ")[1].split("%")[0])
    before = float(out.split("warning: only ")[1].split("%")[0])
    assert covered > before + 30


def test_training_prints_the_coverage_and_no_warning_for_shapes(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["data.shapes.num_train=8", "data.shapes.num_val=2", "model.image_size=[64,64]"]
    args += ["train.epochs=1", "train.steps_per_epoch=1", "eval.every=0", "eval.samples=0"]
    args += ["train.checkpoint.best=val_loss", "model.fpn_channels=16"]
    sets = [x for a in args for x in ("--set", a)]
    assert kdetect("train", SHAPES, "--run-dir", run, *sets) == 0
    captured = capsys.readouterr()
    out = " ".join((captured.out + captured.err).split())
    assert "anchors: " in out and "training boxes overlap an anchor by IoU >= 0.3" in out
    assert "warning: only" not in out
