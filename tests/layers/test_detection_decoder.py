"""DetectionDecoder (kdetect.layers.detection) against a NumPy reference: softmax, per-class
decode with weights (10, 10, 5, 5), clip, min size, score threshold, per-class greedy NMS, top-k."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdetect.layers.detection import DetectionDecoder
from tests.helpers import ref_iou

SCALE_CLIP = math.log(1000.0 / 16)  # torchvision's bbox_xform_clip


def ref_decode(d, ref, weights=(10.0, 10.0, 5.0, 5.0), clip=SCALE_CLIP):
    rw, rh = ref[2] - ref[0], ref[3] - ref[1]
    cx = d[0] / weights[0] * rw + ref[0] + rw / 2
    cy = d[1] / weights[1] * rh + ref[1] + rh / 2
    w = math.exp(min(d[2] / weights[2], clip)) * rw
    h = math.exp(min(d[3] / weights[3], clip)) * rh
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def ref_detect(logits, deltas, proposals, valid, image_size, score_thresh, nms_thresh, k, min_size):
    """One image -> list of (score, class, box), best first."""
    height, width = image_size
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    dets = []
    for c in range(deltas.shape[1]):
        cand = []
        for i in range(len(proposals)):
            if not valid[i]:
                continue
            box = ref_decode(deltas[i, c], proposals[i])
            box = np.clip(box, 0, [width, height, width, height])
            if box[2] - box[0] < min_size or box[3] - box[1] < min_size:
                continue
            score = probs[i, c + 1]  # column 0 is background
            if score > score_thresh:
                cand.append((score, box))
        cand.sort(key=lambda t: -t[0])
        kept = []
        for score, box in cand:
            if all(ref_iou(box, kb) <= nms_thresh for _, kb in kept):
                kept.append((score, box))
        dets += [(s, c, b) for s, b in kept]
    dets.sort(key=lambda t: -t[0])
    return dets[:k]


def _case(rng, batch, rois, classes, image_size):
    h, w = image_size
    centers = rng.uniform([10, 10], [w - 10, h - 10], (batch, 5, 2))
    pick = centers[np.arange(batch)[:, None], rng.integers(0, 5, (batch, rois))]
    half = rng.uniform(4, 25, (batch, rois, 2))
    ctr = pick + rng.normal(0, 3, (batch, rois, 2))
    proposals = np.concatenate([ctr - half, ctr + half], axis=-1).astype(np.float32)
    logits = rng.normal(0, 2, (batch, rois, classes + 1)).astype(np.float32)
    deltas = rng.normal(0, 1, (batch, rois, classes, 4)).astype(np.float32)
    deltas[:, ::9, :, 2] = -40.0  # collapsed width: removed by min_size
    valid = np.ones((batch, rois), bool)
    valid[-1, -12:] = False
    return logits, deltas, proposals, valid


@pytest.mark.parametrize("score_thresh, k", [(0.05, 30), (0.3, 100)])
def test_detection_decoder_vs_numpy(score_thresh, k):
    rng = np.random.default_rng(int(score_thresh * 100))
    image_size = (64, 80)
    logits, deltas, proposals, valid = _case(rng, 2, 40, 3, image_size)
    decoder = DetectionDecoder(score_thresh=score_thresh, nms_thresh=0.5, detections_per_img=k)
    out = decoder(logits, deltas, proposals, valid, image_size)
    boxes, conf = np.asarray(out["boxes"]), np.asarray(out["confidence"])
    labels, num = np.asarray(out["labels"]), np.asarray(out["num_detections"])
    assert boxes.shape == (2, k, 4) and conf.shape == (2, k) and labels.shape == (2, k)
    assert labels.dtype == np.int32 and num.shape == (2,)
    for b in range(2):
        want = ref_detect(
            logits[b].astype(np.float64),
            deltas[b].astype(np.float64),
            proposals[b].astype(np.float64),
            valid[b],
            image_size,
            score_thresh,
            0.5,
            k,
            1e-2,
        )
        n = int(num[b])
        assert n == len(want)
        np.testing.assert_allclose(conf[b, :n], [d[0] for d in want], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(labels[b, :n], [d[1] for d in want])
        np.testing.assert_allclose(boxes[b, :n], np.stack([d[2] for d in want]), atol=1e-3)
        assert np.all(labels[b, n:] == -1) and np.all(conf[b, n:] == 0)
        assert np.all(boxes[b, :n, 0::2] <= image_size[1]) and np.all(boxes[b, :n, 1::2] <= 64)
    if k == 30:
        assert int(num[0]) == 30  # the cap is reached
    else:
        assert np.all(num < k)  # padding rows exist


def test_detection_decoder_invalid_proposals_give_nothing():
    rng = np.random.default_rng(3)
    logits, deltas, proposals, _ = _case(rng, 1, 10, 2, (50, 50))
    logits[..., 1:] += 10.0  # confident foreground everywhere
    out = DetectionDecoder(detections_per_img=5)(
        logits, deltas, proposals, np.zeros((1, 10), bool), (50, 50)
    )
    assert int(out["num_detections"][0]) == 0
    assert np.all(np.asarray(out["labels"]) == -1)
