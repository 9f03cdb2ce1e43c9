"""PASCAL VOC average precision, exactly as the VOC devkit computes it.

The reference is the devkit's ``VOCevaldet.m`` and its Python port in py-faster-rcnn
(``lib/datasets/voc_eval.py``). For one class:

1. All detections of the class, over all images, are sorted by decreasing score (a *stable*
   sort, like MATLAB's ``sort``: equal scores keep their input order).
2. Each detection, in that order, is compared with the ground-truth boxes of its image using the
   devkit's IoU, where a box ``[x1, y1, x2, y2]`` spans ``x2 - x1 + 1`` by ``y2 - y1 + 1`` pixels
   (inclusive integer pixel coordinates).
3. Let ``j`` be the ground truth with the highest IoU (the first one on ties). If that IoU is
   ``> 0.5`` (strictly): when ``j`` is *difficult* the detection is ignored (neither true nor
   false positive); otherwise it is a true positive if ``j`` is not yet taken (and ``j`` becomes
   taken) and a false positive if it is (a duplicate). If the best IoU is ``<= 0.5`` (or the image
   has no ground truth of the class) it is a false positive.
4. Cumulative TP/FP counts give recall ``tp / npos`` (``npos`` = non-difficult ground truths) and
   precision ``tp / (tp + fp)``.
5. AP is either the 11-point interpolated AP of VOC2007 (``voc07``: mean over
   ``t = 0, 0.1, ..., 1`` of the best precision at recall ``>= t``; the thresholds are computed as
   ``k * 0.1`` in floating point, exactly as the reference does) or the area under the monotone
   precision envelope used from VOC2010 on (``voc``).

The mean AP is taken over the classes that have at least one non-difficult ground-truth box; a
class without any has no AP (``None``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

IOU_THRESHOLD = 0.5
VOC_METRICS = ("voc07", "voc")


@dataclass
class ClassCurve:
    """Precision/recall of one class, in score order, and its AP (``None`` without ground truth)."""

    recall: np.ndarray
    precision: np.ndarray
    ap: float | None
    num_positives: int
    num_detections: int


def voc_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``xyxy`` box with each row of ``boxes`` using the devkit's ``+1`` widths.

    Non-overlapping boxes get 0 (the intersection width and height are clipped at 0).
    """
    box = np.asarray(box, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    inter_w = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1.0, 0)
    inter_h = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1.0, 0)
    inter = inter_w * inter_h
    area_box = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    area_boxes = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # inverted boxes: NaN, never a match
        return inter / (area_box + area_boxes - inter)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from a precision/recall curve (both in detection-score order).

    ``use_07_metric=True``: VOC2007's 11-point interpolation. Otherwise the area under the curve
    after replacing each precision by the maximum precision at any higher recall.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        total = 0.0
        for t in np.arange(11) * 0.1:  # same floating-point thresholds as np.arange(0, 1.1, 0.1)
            reached = recall >= t
            total += (precision[reached].max() if reached.any() else 0.0) / 11.0
        return float(total)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone (non-increasing) envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


class ClassInputs(NamedTuple):
    """One class's share of a split (:func:`class_inputs`)."""

    gt_boxes: list[np.ndarray]  # per image, the [M_i, 4] ground-truth boxes of the class
    gt_difficult: list[np.ndarray]  # per image, the [M_i] difficult flags
    det_image: np.ndarray  # [N] image index of each detection
    det_boxes: np.ndarray  # [N, 4] detection boxes
    det_scores: np.ndarray  # [N] scores

    @property
    def num_positives(self) -> int:
        """Ground-truth objects that count (the non-difficult ones)."""
        return int(
            sum(int(np.count_nonzero(~np.asarray(d, dtype=bool))) for d in self.gt_difficult)
        )


def match_class(inputs: ClassInputs) -> tuple[np.ndarray, np.ndarray]:
    """Greedy devkit matching of one class's detections; returns per-detection TP and FP flags.

    Returns:
        ``(tp, fp)``, two float arrays of length N **in descending score order** (stable sort).
        A detection matched to a difficult object has 0 in both.
    """
    gt_boxes, gt_difficult, det_image, det_boxes, det_scores = inputs
    order = np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="stable")
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    taken = [np.zeros(len(b), dtype=bool) for b in gt_boxes]
    for rank, d in enumerate(order):
        image = int(det_image[d])
        boxes = gt_boxes[image]
        if len(boxes) == 0:
            fp[rank] = 1
            continue
        ious = voc_iou(det_boxes[d], boxes)
        best = int(np.argmax(ious))
        if ious[best] > IOU_THRESHOLD:
            if gt_difficult[image][best]:
                continue
            if taken[image][best]:
                fp[rank] = 1
            else:
                tp[rank] = 1
                taken[image][best] = True
        else:
            fp[rank] = 1
    return tp, fp


def class_inputs(
    gt: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    c: int,
) -> ClassInputs:
    """Class ``c``'s share of a split, as :func:`match_class` takes it: per-image ground-truth
    boxes and difficult flags, then the detections' image index, boxes and scores."""
    gt_boxes, gt_diff = [], []
    for boxes, labels, difficult in gt:
        keep = np.asarray(labels) == c
        gt_boxes.append(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[keep])
        gt_diff.append(np.asarray(difficult, dtype=bool).reshape(-1)[keep])
    det_image, det_boxes, det_scores = [], [], []
    for i, (boxes, scores, labels) in enumerate(detections):
        keep = np.asarray(labels) == c
        det_image.append(np.full(int(np.count_nonzero(keep)), i, dtype=np.int64))
        det_boxes.append(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[keep])
        det_scores.append(np.asarray(scores, dtype=np.float64).reshape(-1)[keep])
    return ClassInputs(
        gt_boxes,
        gt_diff,
        np.concatenate(det_image) if det_image else np.zeros(0, np.int64),
        np.concatenate(det_boxes) if det_boxes else np.zeros((0, 4)),
        np.concatenate(det_scores) if det_scores else np.zeros(0),
    )


def class_curve(inputs: ClassInputs, use_07_metric: bool) -> ClassCurve:
    """Precision/recall curve and AP of one class."""
    npos = inputs.num_positives
    tp, fp = match_class(inputs)
    tp = np.cumsum(tp)
    fp = np.cumsum(fp)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if npos == 0:
        return ClassCurve(np.zeros_like(tp), precision, None, 0, len(tp))
    recall = tp / float(npos)
    return ClassCurve(recall, precision, voc_ap(recall, precision, use_07_metric), npos, len(tp))


def voc_evaluate(
    classes: list[str],
    gt: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    metric: str = "voc07",
) -> tuple[dict, dict[str, ClassCurve]]:
    """VOC metrics of a whole split.

    Args:
        classes: class names; labels index into this list.
        gt: per image ``(boxes [M, 4] xyxy, labels [M], difficult [M])``.
        detections: per image (same order as ``gt``) ``(boxes [N, 4] xyxy, scores [N],
            labels [N])``.
        metric: ``"voc07"`` (11-point) or ``"voc"`` (area).

    Returns:
        ``(metrics, curves)``: the metrics dict (``metric``, ``mAP``, ``per_class``,
        ``num_ground_truth``, ``num_images``, ``num_detections``, ``iou_threshold``) and the
        per-class precision/recall curves.
    """
    if metric not in VOC_METRICS:
        raise ValueError(f"metric must be one of {VOC_METRICS}, got {metric!r}")
    use_07 = metric == "voc07"
    curves: dict[str, ClassCurve] = {}
    for c, name in enumerate(classes):
        curves[name] = class_curve(class_inputs(gt, detections, c), use_07)
    aps = [curve.ap for curve in curves.values() if curve.ap is not None]
    metrics = {
        "metric": metric,
        "mAP": float(np.mean(aps)) if aps else 0.0,
        "per_class": {name: curve.ap for name, curve in curves.items()},
        "num_ground_truth": {name: curve.num_positives for name, curve in curves.items()},
        "num_images": len(gt),
        "num_detections": int(sum(curve.num_detections for curve in curves.values())),
        "iou_threshold": IOU_THRESHOLD,
    }
    return metrics, curves
