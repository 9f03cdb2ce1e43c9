"""kdetect.drawing.plots: results.png and labels.png are real, legible PNGs of the given numbers."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from kdetect.drawing.plots import plot_labels, plot_pr_curves_together, plot_results, read_history


def test_results_plot_from_a_history_file(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text(
        "epoch,loss,rpn_cls_loss,val_loss,val_map,lr\n"
        "1,2.0,0.7,2.1,,0.001\n"
        "2,1.5,0.5,1.8,0.42,0.0005\n"
    )
    rows = read_history(history)
    assert rows[0] == {"epoch": 1.0, "loss": 2.0, "rpn_cls_loss": 0.7, "val_loss": 2.1, "lr": 0.001}
    path = plot_results(rows, tmp_path / "results.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1600, 700)
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # drawn, not blank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "results.png"]


def test_labels_plot_of_boxes_in_the_frame(tmp_path):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (50, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 28, (50, 2))], axis=1)
    labels = rng.integers(0, 3, 50)
    path = plot_labels(boxes, labels, ["a", "b", "c"], (128, 128), tmp_path / "labels.png")
    with Image.open(path) as image:
        assert image.size == (1200, 900)
        assert np.asarray(image.convert("L")).std() > 10
    # No boxes at all still draws (an empty dataset split is reported elsewhere).
    plot_labels(np.zeros((0, 4)), np.zeros(0, int), ["a"], (64, 64), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_no_empty_legend_warning(tmp_path):
    """Classes without detections draw no curve: no legend then, and no matplotlib warning."""
    empty = (np.zeros(0), np.zeros(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_pr_curves_together({"a": empty, "b": empty}, {"a": 0.0}, "PR", tmp_path / "pr.png")
        plot_pr_curves_together({}, {}, "PR", tmp_path / "none.png")
        plot_labels(np.zeros((0, 4)), np.zeros(0, int), ["a"], (64, 64), tmp_path / "labels.png")
        plot_results([{"epoch": 1.0, "val_mAP": 0.5}], tmp_path / "results.png")
    assert (tmp_path / "pr.png").stat().st_size > 0


def test_a_training_batch_is_drawn_enlarged_with_its_boxes():
    """train_batch.jpg: small images enlarged (so labels read), boxes scaled with them,
    padding rows skipped, tiled four wide."""
    from kdetect.drawing.visualize import class_color, draw_batch

    images = np.full((5, 64, 80, 3), 255.0, "float32")
    boxes = np.zeros((5, 3, 4), "float32")
    boxes[:, 0] = [8, 16, 40, 48]
    labels = -np.ones((5, 3), "int32")
    labels[:, 0] = 1
    grid = np.asarray(draw_batch(images, boxes, labels, ["a", "b"]))
    scale = 5  # 64 px -> 320 (DRAW_MIN_SIDE)
    assert grid.shape == (2 * 320 + 2, 4 * 400 + 3 * 2, 3)
    # the box's lower edge, scaled, is drawn in class 1's colour in the first tile
    assert tuple(grid[48 * scale, 30 * scale]) == class_color(1)
    # a padding row draws nothing: the tile's far corner stays white
    assert tuple(grid[315, 395]) == (255, 255, 255)
