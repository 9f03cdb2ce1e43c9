"""The pictures every run directory gets, drawn with matplotlib (no display needed).

* :func:`plot_results` -> ``results.png``: each loss term (training and validation), the
  validation mAP and the learning rate, per epoch, from ``history.csv``.
* :func:`plot_labels` -> ``labels.png``: what the training boxes look like in the network's
  frame: boxes per class, width against height, aspect ratios, where box centres fall.
* the evaluation's pictures (``plots/`` of a run): precision-recall curves per class and all
  together, the F1 curve, the confusion matrix, ground truth against predictions.

Both write through :func:`kdetect.plumbing.paths.atomic_path`, so a crash leaves the old picture or
the new one.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

from kdetect.models import loss_names
from kdetect.plumbing.paths import atomic_path

DPI = 100


def read_history(path: str | os.PathLike) -> list[dict[str, float]]:
    """``history.csv`` rows as floats (empty cells left out; older runs'
    ``val_map`` column read as ``val_mAP``)."""
    with open(path, newline="") as f:
        return [
            {
                ("val_mAP" if k == "val_map" else k): float(v)
                for k, v in row.items()
                if v not in ("", None)
            }
            for row in csv.DictReader(f)
        ]


def _save(figure, output: str | os.PathLike) -> Path:
    output = Path(output)
    with atomic_path(output) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)  # a bare Figure: Agg, no GUI, no pyplot
    return output


def plot_results(rows: Sequence[dict[str, float]], output: str | os.PathLike) -> Path:
    """``results.png``: one panel per loss term (training and validation curves), then the
    validation mAP and the learning rate, against the epoch. Returns ``output``."""
    terms = loss_names(rows[0]) if rows else ["loss"]
    panels = [(term, term.removesuffix("_loss").replace("_", " ")) for term in terms[:6]]
    panels += [("val_mAP", "validation mAP"), ("lr", "learning rate")]
    figure = Figure(figsize=(16, 7), layout="constrained")
    axes = figure.subplots(2, 4)
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(rows)]
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for name, label, style in ((key, "train", "o-"), (f"val_{key}", "validation", "s--")):
            if key in ("val_mAP", "lr") and name != key:
                continue
            points = [(e, row[name]) for e, row in zip(epochs, rows, strict=True) if name in row]
            if points:
                x, y = zip(*points, strict=True)
                shown = label if key not in ("val_mAP", "lr") else None
                ax.plot(x, y, style, markersize=4, label=shown)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if key == "val_mAP":
            ax.set_ylim(0, 1)
        elif key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        else:
            _legend(ax, fontsize=8)
        if not ax.lines:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    figure.suptitle("training results", fontsize=14)
    return _save(figure, output)


def plot_labels(
    boxes: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    frame: tuple[int, int],
    output: str | os.PathLike,
) -> Path:
    """``labels.png`` of ``boxes`` [N, 4] ``xyxy`` already in the network's ``frame`` (height,
    width) and their ``labels`` [N]: boxes per class, width vs height (log axes, coloured by
    class), the aspect-ratio histogram and a heat map of box centres. Returns ``output``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    box_w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-3)
    box_h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
    colours = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    figure = Figure(figsize=(12, 9), layout="constrained")
    axes = figure.subplots(2, 2)
    _plot_class_counts(axes[0, 0], labels, classes, colours)
    _plot_box_sizes(axes[0, 1], box_w, box_h, labels, classes, colours, frame)
    _plot_aspect_ratios(axes[1, 0], box_w, box_h)
    _plot_box_centres(figure, axes[1, 1], boxes, frame)
    figure.suptitle("training labels", fontsize=14)
    return _save(figure, output)


def _plot_class_counts(ax, labels: np.ndarray, classes: Sequence[str], colours) -> None:
    counts = np.bincount(labels, minlength=len(classes))[: len(classes)]
    ax.bar(range(len(classes)), counts, color=[colours(i % colours.N) for i in range(len(classes))])
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 6 else 0, ha="right")
    ax.set_title(f"boxes per class ({len(labels)} boxes)")
    ax.set_ylabel("boxes")


def _plot_box_sizes(ax, box_w, box_h, labels, classes: Sequence[str], colours, frame) -> None:
    """Width against height on log axes, one colour per class."""
    for i, name in enumerate(classes):
        mine = labels == i
        if mine.any():
            ax.scatter(
                box_w[mine], box_h[mine], s=6, alpha=0.5, color=colours(i % colours.N), label=name
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain pixel numbers at 1, 2, 5, 10, 20, ...
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("width (pixels of the network frame)")
    ax.set_ylabel("height (pixels)")
    ax.set_title(f"box sizes in the {frame[0]}x{frame[1]} frame")
    ax.grid(alpha=0.3, which="both")
    if len(classes) <= 20:
        _legend(ax, fontsize=8, markerscale=2)


def _plot_aspect_ratios(ax, box_w, box_h) -> None:
    ratios = np.log2(box_h / box_w)
    limit = max(2.0, math.ceil(float(np.abs(ratios).max())) if len(ratios) else 2.0)
    ax.hist(ratios, bins=40, range=(-limit, limit), color="tab:blue")
    ax.set_xlabel("log2(height / width): 0 = square, +1 = twice as tall")
    ax.set_ylabel("boxes")
    ax.set_title("aspect ratios")


def _plot_box_centres(figure, ax, boxes: np.ndarray, frame: tuple[int, int]) -> None:
    """A 32x32 heat map of box centres over the frame."""
    height, width = frame
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    heat, _, _ = np.histogram2d(cy, cx, bins=(32, 32), range=((0, height), (0, width)))
    image = ax.imshow(heat, extent=(0, width, height, 0), cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=ax, label="box centres")
    ax.set_title("where box centres fall")
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")


def plot_f1_curves(f1: dict, output: str | os.PathLike) -> Path:
    """F1 against the score threshold, per class and averaged (``f1_curves``' result), with the
    best threshold marked. Returns ``output``."""
    figure = Figure(figsize=(8, 6), layout="constrained")
    ax = figure.subplots()
    thresholds = f1["thresholds"]
    for name, curve in f1["per_class"].items():
        ax.plot(thresholds, curve["f1"], linewidth=1, alpha=0.6, label=name)
    best = f1["best"]
    ax.plot(thresholds, f1["mean_f1"], color="black", linewidth=2.5, label="all classes")
    ax.axvline(best["threshold"], color="tab:red", linestyle="--")
    ax.annotate(
        f"best {best['f1']:.2f} at {best['threshold']:.2f}",
        (best["threshold"], best["f1"]),
        xytext=(8, 8),
        textcoords="offset points",
        color="tab:red",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("score threshold")
    ax.set_ylabel("F1 (IoU > 0.5)")
    ax.set_title("F1 against the score threshold")
    ax.grid(alpha=0.3)
    if len(f1["per_class"]) <= 20:
        _legend(ax, fontsize=8, loc="lower left")
    return _save(figure, output)


def plot_confusion_matrix(
    matrix: np.ndarray, classes: Sequence[str], threshold: float, output: str | os.PathLike
) -> Path:
    """The ``[C + 1, C + 1]`` confusion matrix (``thresholds.confusion_matrix``), each true
    class's row normalised to fractions and the counts written in the cells. Returns ``output``."""
    names = [*classes, "background"]
    counts = np.asarray(matrix, np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.where(rows > 0, counts / np.maximum(rows, 1), 0.0)
    side = max(5.0, 0.55 * len(names) + 2.5)
    figure = Figure(figsize=(side + 1, side), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="share of the true class's row")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (score >= {threshold:.2f}, IoU > 0.5)")
    if len(names) <= 30:
        for (i, j), count in np.ndenumerate(counts):
            if count:
                colour = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
    return _save(figure, output)


def plot_ground_truth_vs_predictions(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    titles: Sequence[str],
    output: str | os.PathLike,
) -> Path:
    """A grid of validation images: each row one image, its ground truth drawn on the left and
    the model's detections on the right (``pairs`` of already drawn uint8 images, as
    :func:`kdetect.drawing.visualize.draw_detections` makes them). Returns ``output``."""
    rows = max(1, len(pairs))
    figure = Figure(figsize=(10, 4.2 * rows), layout="constrained")
    axes = np.asarray(figure.subplots(rows, 2, squeeze=False))
    for row, ((truth, found), title) in enumerate(zip(pairs, titles, strict=True)):
        for ax, image, side in (
            (axes[row, 0], truth, "ground truth"),
            (axes[row, 1], found, "predictions"),
        ):
            ax.imshow(image)
            ax.set_title(f"{title}: {side}", fontsize=10)
            ax.axis("off")
    for ax in axes.flat[2 * len(pairs) :]:
        ax.axis("off")
    return _save(figure, output)


def plot_pr_curve(
    recall: np.ndarray, precision: np.ndarray, title: str, output: str | os.PathLike
) -> Path:
    """One class's precision against recall (the curve the AP integrates). Returns ``output``."""
    figure = Figure(figsize=(4.8, 4.0), layout="constrained")  # 480 x 400 px
    ax = figure.subplots()
    _draw_pr(ax, recall, precision, color="tab:blue", linewidth=2)
    ax.set_title(title)
    _pr_axes(ax)
    return _save(figure, output)


def plot_pr_curves_together(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    ap: dict[str, float | None],
    title: str,
    output: str | os.PathLike,
) -> Path:
    """Every class's precision-recall curve on one figure, the legend giving each class's AP."""
    figure = Figure(figsize=(8, 6), layout="constrained")
    ax = figure.subplots()
    for name, (recall, precision) in curves.items():
        value = ap.get(name)
        label = f"{name} {value:.3f}" if isinstance(value, (int, float)) else name
        _draw_pr(ax, recall, precision, linewidth=1.5, label=label)
    ax.set_title(title)
    _pr_axes(ax)
    if len(curves) <= 20:
        _legend(ax, fontsize=8, loc="lower left")
    return _save(figure, output)


def _legend(ax, **style) -> None:
    """A legend of the axes' labelled artists; none when nothing was drawn with a label (a class
    without detections draws no curve), where matplotlib would warn of an empty legend."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**style)


def _draw_pr(ax, recall, precision, **style) -> None:
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if len(recall):  # the curve starts at recall 0 with its first precision
        ax.plot(np.r_[0.0, recall], np.r_[precision[0], precision], **style)


def _pr_axes(ax) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
