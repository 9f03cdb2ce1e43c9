"""kdetect.ops.tf_ops: padded greedy NMS and multi-class NMS against NumPy greedy NMS."""

from __future__ import annotations

import numpy as np

from kdetect.ops.tf_ops import multiclass_nms, nms_padded
from tests.helpers import ref_iou

# --------------------------------------------------------------------------------------------
# References (torchvision semantics: visit boxes by descending score, drop a box whose IoU with
# an already kept box is > threshold).


def ref_nms(boxes, scores, iou_threshold, score_threshold=-np.inf, max_out=None):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if scores[i] <= score_threshold:
            continue
        if all(ref_iou(boxes[i], boxes[j]) <= iou_threshold for j in keep):
            keep.append(i)
    return keep if max_out is None else keep[:max_out]


def ref_multiclass_nms(boxes, scores, k, iou_threshold, score_threshold):
    """boxes [N, C, 4], scores [N, C] -> list of (score, class, box), best first, at most k."""
    dets = []
    for c in range(scores.shape[1]):
        for i in ref_nms(boxes[:, c], scores[:, c], iou_threshold, score_threshold):
            dets.append((scores[i, c], c, boxes[i, c]))
    dets.sort(key=lambda d: -d[0])
    return dets[:k]


def clustered_boxes(rng, n, centers=6, size=200.0):
    """Boxes around a few centres so that many overlap (NMS has work to do)."""
    c = rng.uniform(20, size - 20, (centers, 2))
    pick = c[rng.integers(0, centers, n)]
    half = rng.uniform(5, 30, (n, 2))
    jitter = rng.normal(0, 4, (n, 2))
    ctr = pick + jitter
    return np.concatenate([ctr - half, ctr + half], axis=1).astype(np.float32)


# --------------------------------------------------------------------------------------------


def test_nms_padded_vs_numpy_greedy():
    rng = np.random.default_rng(0)
    b, n, k = 3, 80, 20
    boxes = np.stack([clustered_boxes(rng, n) for _ in range(b)])
    scores = rng.permutation(b * n).reshape(b, n).astype(np.float32) / (b * n)  # distinct
    for thr in (0.3, 0.7):
        idx, num = nms_padded(boxes, scores, k, thr)
        idx, num = np.asarray(idx), np.asarray(num)
        assert idx.shape == (b, k) and num.shape == (b,)
        for i in range(b):
            want = ref_nms(boxes[i], scores[i], thr, max_out=k)
            assert num[i] == len(want)
            np.testing.assert_array_equal(idx[i, : num[i]], want)
            assert np.all(idx[i, num[i] :] == 0)  # padding rows are 0
    # With the threshold 0.3 fewer than 80 boxes survive, but more than one.
    idx, num = nms_padded(boxes, scores, n, 0.3)
    assert np.all((np.asarray(num) > 1) & (np.asarray(num) < n))


def test_nms_padded_score_threshold_and_short_output():
    rng = np.random.default_rng(1)
    boxes = clustered_boxes(rng, 40)[None]
    scores = rng.uniform(0, 1, (1, 40)).astype(np.float32)
    idx, num = nms_padded(boxes, scores, 50, 0.5, score_threshold=0.6)  # more slots than boxes
    want = ref_nms(boxes[0], scores[0], 0.5, score_threshold=0.6)
    assert int(num[0]) == len(want) < 40
    np.testing.assert_array_equal(np.asarray(idx)[0, : len(want)], want)
    assert np.all(scores[0, want] > 0.6)


def test_nms_padded_boxes_with_negative_coordinates():
    # Boxes lying entirely at non-positive coordinates (e.g. before clipping) are real boxes.
    boxes = np.array(
        [[[-20, -20, -5, -5], [-19, -19, -5, -5], [10, 10, 20, 20], [-50, -50, -30, -30]]],
        np.float32,
    )
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], np.float32)
    idx, num = nms_padded(boxes, scores, 4, 0.5)
    assert int(num[0]) == 3
    np.testing.assert_array_equal(np.asarray(idx)[0, :3], [0, 2, 3])
    # The same boxes moved into the positive quadrant give the same answer.
    idx2, num2 = nms_padded(boxes + 100.0, scores, 4, 0.5)
    np.testing.assert_array_equal(np.asarray(idx2), np.asarray(idx))


def test_multiclass_nms_vs_numpy():
    rng = np.random.default_rng(2)
    b, n, c, k = 2, 50, 3, 15
    boxes = np.stack(
        [np.stack([clustered_boxes(rng, n, centers=4) for _ in range(c)], axis=1) for _ in range(b)]
    )  # [B, N, C, 4]
    scores = rng.permutation(b * n * c).reshape(b, n, c).astype(np.float32) / (b * n * c)
    out_boxes, out_scores, out_classes, num = (
        np.asarray(x) for x in multiclass_nms(boxes, scores, k, 0.5, 0.2)
    )
    assert out_boxes.shape == (b, k, 4) and out_scores.shape == (b, k)
    assert out_classes.shape == (b, k) and out_classes.dtype == np.int32
    for i in range(b):
        want = ref_multiclass_nms(boxes[i], scores[i], k, 0.5, 0.2)
        assert num[i] == len(want)
        m = len(want)
        np.testing.assert_allclose(out_scores[i, :m], [d[0] for d in want], rtol=1e-6)
        np.testing.assert_array_equal(out_classes[i, :m], [d[1] for d in want])
        np.testing.assert_allclose(out_boxes[i, :m], np.stack([d[2] for d in want]), rtol=1e-6)
        assert np.all(out_scores[i, m:] == 0) and np.all(out_boxes[i, m:] == 0)


def test_multiclass_nms_few_candidates_pads():
    boxes = np.array([[[[0, 0, 10, 10], [0, 0, 10, 10]], [[1, 1, 11, 11], [50, 50, 60, 60]]]])
    scores = np.array([[[0.9, 0.3], [0.8, 0.01]]], np.float32)
    out_boxes, out_scores, out_classes, num = (
        np.asarray(x) for x in multiclass_nms(boxes.astype(np.float32), scores, 5, 0.5, 0.05)
    )
    # class 0: box 1 suppressed by box 0 (IoU 0.68); class 1: only box 0 passes 0.05.
    assert int(num[0]) == 2
    np.testing.assert_allclose(out_scores[0], [0.9, 0.3, 0, 0, 0])
    np.testing.assert_array_equal(out_classes[0, :2], [0, 1])
    np.testing.assert_allclose(out_boxes[0, :2], [[0, 0, 10, 10], [0, 0, 10, 10]])
