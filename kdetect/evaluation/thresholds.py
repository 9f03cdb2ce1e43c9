"""Choosing a score threshold: F1 against the threshold, and the confusion matrix at it.

Detections are matched to the ground truth per class with the VOC devkit rule (greedy by score,
IoU > 0.5, each object matched once, ``difficult`` objects neither hit nor miss). At threshold
``t`` a class's precision and recall count its matched detections scoring at least ``t``; F1 is
their harmonic mean. The best threshold maximises the F1 averaged over the classes that have
ground truth (as Ultralytics reports it); it is what ``kdetect predict`` and ``kdetect serve``
use by default for the run (``metrics.json`` ``"f1"``).

The confusion matrix at a threshold has one row per true class plus ``background`` (detections
that match no object) and one column per predicted class plus ``background`` (objects that no
detection found): each object is paired with the highest-scoring detection of any class that
overlaps it by IoU > 0.5 and was not taken by another object.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kdetect.evaluation.voc import IOU_THRESHOLD, class_inputs, match_class, voc_iou

THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 2)


def _per_class(gt, detections, c: int):
    """Class ``c``'s detection scores (descending), TP/FP flags in that order, and object count."""
    inputs = class_inputs(gt, detections, c)
    tp, fp = match_class(inputs)
    return np.sort(inputs.det_scores)[::-1], tp, fp, inputs.num_positives


def f1_curves(
    classes: Sequence[str],
    gt: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict:
    """Precision, recall and F1 at each of :data:`THRESHOLDS`, per class and averaged.

    ``gt`` and ``detections`` are as :func:`kdetect.evaluation.voc.voc_evaluate` takes them.
    Returns ``{"thresholds", "per_class": {name: {"precision", "recall", "f1"}}, "mean_f1",
    "best": {"threshold", "f1", "precision", "recall"}}`` (lists of floats; ``best`` is the
    highest threshold reaching the highest mean F1, 0.5 when no class has ground truth).
    """
    per_class, rows = {}, []
    for c, name in enumerate(classes):
        scores, tp, fp, positives = _per_class(gt, detections, c)
        # Detections are in descending score order: those >= t are a prefix.
        kept = np.searchsorted(-scores, -THRESHOLDS, side="right")
        tp_at = np.concatenate([[0.0], np.cumsum(tp)])[kept]
        fp_at = np.concatenate([[0.0], np.cumsum(fp)])[kept]
        precision = np.where(tp_at + fp_at > 0, tp_at / np.maximum(tp_at + fp_at, 1e-12), 1.0)
        recall = tp_at / positives if positives else np.zeros_like(tp_at)
        f1 = np.where(
            precision + recall > 0,
            2 * precision * recall / np.maximum(precision + recall, 1e-12),
            0,
        )
        per_class[name] = {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
        }
        if positives:
            rows.append((precision, recall, f1))
    if rows:
        precision, recall, f1 = (np.mean([r[k] for r in rows], axis=0) for k in range(3))
        # The highest threshold at the maximum: as good, with fewer low-score detections.
        best = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[-1])
        summary = {
            "threshold": float(THRESHOLDS[best]),
            "f1": float(f1[best]),
            "precision": float(precision[best]),
            "recall": float(recall[best]),
        }
        mean_f1 = f1.tolist()
    else:
        summary = {"threshold": 0.5, "f1": 0.0, "precision": 0.0, "recall": 0.0}
        mean_f1 = [0.0] * len(THRESHOLDS)
    return {
        "thresholds": THRESHOLDS.tolist(),
        "per_class": per_class,
        "mean_f1": mean_f1,
        "best": summary,
    }


def confusion_matrix(
    num_classes: int,
    gt: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    threshold: float,
) -> np.ndarray:
    """int64 ``[C + 1, C + 1]``: rows true class (last: background), columns predicted class
    (last: background), for detections scoring at least ``threshold``; difficult objects and
    the detections they take are left out."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    background = num_classes
    for (gt_boxes, gt_labels, difficult), (boxes, scores, labels) in zip(
        gt, detections, strict=True
    ):
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
        difficult = np.asarray(difficult, bool).reshape(-1)
        scores = np.asarray(scores, np.float64).reshape(-1)
        keep = scores >= threshold
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)[keep]
        labels = np.asarray(labels, np.int64).reshape(-1)[keep]
        order = np.argsort(-scores[keep], kind="stable")
        taken = np.zeros(len(gt_boxes), bool)
        for d in order:  # detections by score take the object they overlap most
            if len(gt_boxes) == 0:
                matrix[background, labels[d]] += 1
                continue
            ious = np.where(taken, -1.0, voc_iou(boxes[d], gt_boxes))
            best = int(np.argmax(ious))
            if ious[best] > IOU_THRESHOLD:
                taken[best] = True
                if not difficult[best]:
                    matrix[gt_labels[best], labels[d]] += 1
            else:
                matrix[background, labels[d]] += 1
        for g in np.flatnonzero(~taken & ~difficult):
            matrix[gt_labels[g], background] += 1
    return matrix
