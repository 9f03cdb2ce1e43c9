"""Do the anchors fit the boxes? Coverage before training, and a better setting when they don't.

The RPN learns only from anchors that overlap an object: an anchor is a positive when its IoU
with a box reaches ``rpn.fg_iou_thresh`` (0.7), and the low-quality rule also makes each box's
best anchor a positive whatever its IoU. With anchor sizes an octave apart, a box between two
sizes reaches only ~0.5 with either, so many boxes of every dataset (COCO with the default
anchors included) are learnt through the low-quality rule; that is fine as long as the best
anchor really overlaps the box. A box whose best anchor reaches less than ``rpn.bg_iou_thresh``
(0.3) - a long thin box among square anchors, a 5-pixel box among 32-pixel anchors - is learnt
from an anchor that is mostly background, or not at all.

:func:`anchor_coverage` gives, over the training boxes scaled into the network frame, the share
whose best anchor reaches ``bg_iou_thresh`` (``"covered"``: what the 98 % warning is about) and
the share reaching ``fg_iou_thresh`` (``"fg"``, for information), overall and per class.
:func:`suggest_anchors` proposes ``anchor_sizes`` (one size per level, quantiles of the boxes'
``sqrt(w * h)``) and ``aspect_ratios`` (quantiles of their ``h / w``) and keeps whichever of the
current setting and the proposals covers most boxes (then most at ``fg``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Below this share of boxes covered (best anchor IoU at least ``bg_iou_thresh``), training
#: warns and suggests a setting.
MIN_COVERAGE = 0.98
_CHUNK = 256


def iou_matrix(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of every ``xyxy`` box of ``boxes1`` [N, 4] with every box of ``boxes2`` [M, 4] in
    NumPy (``kdetect.ops.boxes.pairwise_iou`` is the model's, in Keras ops); [N, M]."""
    a = np.asarray(boxes1, np.float32).reshape(-1, 1, 4)
    b = np.asarray(boxes2, np.float32).reshape(1, -1, 4)
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def best_anchor_iou(boxes: np.ndarray, anchors: Sequence[np.ndarray]) -> np.ndarray:
    """The largest IoU of each box [N, 4] (``xyxy``) with any of ``anchors`` (per level
    [A_l, 4]); float32 [N]. Boxes go in chunks, so memory stays at chunk x anchors."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    every = np.concatenate([np.asarray(a, np.float32).reshape(-1, 4) for a in anchors])
    best = np.zeros(len(boxes), np.float32)
    for start in range(0, len(boxes), _CHUNK):
        best[start : start + _CHUNK] = iou_matrix(boxes[start : start + _CHUNK], every).max(1)
    return best


def anchor_coverage(
    best_iou: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    fg_iou: float = 0.7,
    covered_iou: float = 0.3,
) -> dict:
    """``{"covered", "fg", "boxes", "per_class": {name: {"covered", "fg", "boxes"}}}`` from each
    box's best anchor IoU (:func:`best_anchor_iou`): the shares reaching ``covered_iou`` and
    ``fg_iou``, in [0, 1] (None for a class without boxes)."""
    best_iou = np.asarray(best_iou, np.float64)
    labels = np.asarray(labels).reshape(-1)

    def shares(mask):
        n = int(mask.sum())
        if n == 0:
            return {"covered": None, "fg": None, "boxes": 0}
        values = best_iou[mask]
        return {
            "covered": float(np.mean(values >= covered_iou)),
            "fg": float(np.mean(values >= fg_iou)),
            "boxes": n,
        }

    result = shares(np.ones(len(best_iou), bool))
    result["per_class"] = {name: shares(labels == i) for i, name in enumerate(classes)}
    return result


def _quantiles(values: np.ndarray, count: int) -> list[float]:
    return [float(np.quantile(values, (i + 0.5) / count)) for i in range(count)]


def candidate_settings(
    boxes: np.ndarray, levels: int, sizes_per_level: int, num_ratios: int = 3
) -> list[tuple[list[list[float]], list[float]]]:
    """Anchor settings fitted to ``boxes`` [N, 4] in the network frame: sizes at quantiles of
    ``sqrt(w * h)`` spread over ``levels`` levels (``sizes_per_level`` each), and aspect ratios
    at quantiles of ``h / w`` (geometric: ``log`` ratios)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-3)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
    scale = np.sqrt(w * h)
    sizes = sorted(_quantiles(scale, levels * sizes_per_level))
    rounded = [round(s, 1) for s in sizes]
    per_level = [rounded[i * sizes_per_level : (i + 1) * sizes_per_level] for i in range(levels)]
    ratios = sorted({round(float(np.exp(q)), 3) for q in _quantiles(np.log(h / w), num_ratios)})
    wide = sorted({*ratios, 1.0})
    return [(per_level, ratios), (per_level, wide)]


def suggest_anchors(
    boxes: np.ndarray,
    anchors_for,
    current: tuple[Sequence[Sequence[float]], Sequence[float]],
    fg_iou: float = 0.7,
    covered_iou: float = 0.3,
) -> tuple[list[list[float]], list[float], float]:
    """The best of the current ``(anchor_sizes, aspect_ratios)`` and the fitted candidates.

    ``anchors_for(sizes, ratios)`` returns the per-level anchors of the network frame for a
    setting (the model's feature-map grid). Returns ``(sizes, ratios, covered share)`` of the
    setting that covers most boxes at ``covered_iou`` (ties: most at ``fg_iou``).
    """
    sizes, ratios = [list(map(float, s)) for s in current[0]], list(map(float, current[1]))
    levels, per_level = len(sizes), len(sizes[0])

    def score(setting):
        best = best_anchor_iou(boxes, anchors_for(*setting))
        return float(np.mean(best >= covered_iou)), float(np.mean(best >= fg_iou))

    best_setting, best_score = (sizes, ratios), score((sizes, ratios))
    for candidate in candidate_settings(boxes, levels, per_level, max(3, len(ratios))):
        value = score(candidate)
        if value > best_score:
            best_setting, best_score = candidate, value
    return best_setting[0], best_setting[1], best_score[0]
