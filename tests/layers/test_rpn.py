"""RPN pieces (kdetect.layers.rpn): head layout, target assignment and proposal generation,
against NumPy references written here."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from kdetect.layers.fpn import FeaturePyramid
from kdetect.layers.rpn import ProposalGenerator, RPNHead, RPNTargetAssigner
from kdetect.ops.anchors import cell_anchors, grid_anchors
from tests.helpers import ref_iou, ref_iou_matrix

SCALE_CLIP = math.log(1000.0 / 16)  # torchvision's bbox_xform_clip

# --------------------------------------------------------------------------------------------
# References.


def ref_match_low_quality(iou, valid, high, low):
    """torchvision Matcher with allow_low_quality_matches=True; -1 below, -2 between."""
    n = iou.shape[0]
    cols = [j for j in range(iou.shape[1]) if valid[j]]
    matches = np.full(n, -1)
    best = np.zeros(n, np.int64)
    for i in range(n):
        if not cols:
            continue
        j = max(cols, key=lambda c: (iou[i, c], -c))
        best[i] = j
        v = iou[i, j]
        matches[i] = j if v >= high else (-1 if v < low else -2)
    for j in cols:
        top = iou[:, j].max()
        if top > 0:
            for i in range(n):
                if iou[i, j] == top:
                    matches[i] = best[i]
    return matches


def ref_encode(box, ref):
    w, h = box[2] - box[0], box[3] - box[1]
    rw, rh = ref[2] - ref[0], ref[3] - ref[1]
    return [
        (box[0] + w / 2 - ref[0] - rw / 2) / rw,
        (box[1] + h / 2 - ref[1] - rh / 2) / rh,
        math.log(w / rw),
        math.log(h / rh),
    ]


def ref_decode(d, ref, clip=SCALE_CLIP):
    rw, rh = ref[2] - ref[0], ref[3] - ref[1]
    cx = d[0] * rw + ref[0] + rw / 2
    cy = d[1] * rh + ref[1] + rh / 2
    w = math.exp(min(d[2], clip)) * rw
    h = math.exp(min(d[3], clip)) * rh
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def ref_nms(boxes, scores, thr):
    keep = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if all(ref_iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def ref_proposals(logits, deltas, anchors_per_level, image_size, pre_n, post_n, thr, min_size):
    """One image: per level top-k, decode, clip, min-size, greedy NMS; then global top-n.

    Returns a list of (score, level, box), best first."""
    height, width = image_size
    out, start = [], 0
    for level, anchors in enumerate(anchors_per_level):
        lg = logits[start : start + len(anchors)]
        dl = deltas[start : start + len(anchors)]
        start += len(anchors)
        order = sorted(range(len(lg)), key=lambda i: -lg[i])[: min(pre_n, len(lg))]
        boxes, scores = [], []
        for i in order:
            box = ref_decode(dl[i].astype(np.float64), anchors[i].astype(np.float64))
            box = np.array(
                [
                    min(max(box[0], 0), width),
                    min(max(box[1], 0), height),
                    min(max(box[2], 0), width),
                    min(max(box[3], 0), height),
                ]
            )
            if box[2] - box[0] >= min_size and box[3] - box[1] >= min_size:
                boxes.append(box)
                scores.append(1.0 / (1.0 + math.exp(-lg[i])))
        for i in ref_nms(boxes, scores, thr):
            out.append((scores[i], level, boxes[i]))
    out.sort(key=lambda t: -t[0])
    return out[:post_n]


# --------------------------------------------------------------------------------------------


def test_rpn_head_shapes_and_anchor_layout():
    head = RPNHead(num_anchors=3, channels=8)
    rng = np.random.default_rng(0)
    feats = [
        rng.normal(size=(2, 6, 5, 4)).astype(np.float32),
        rng.normal(size=(2, 3, 3, 4)).astype(np.float32),
    ]
    logits, deltas = head(feats)
    logits, deltas = np.asarray(logits), np.asarray(deltas)
    total = (6 * 5 + 3 * 3) * 3
    assert logits.shape == (2, total) and deltas.shape == (2, total, 4)
    # Entry (y*W + x)*A + k of level 0 is anchor k of cell (y, x): same order as grid_anchors.
    x = head.conv(feats[0])
    obj = np.asarray(head.objectness(x))  # [B, H, W, A]
    box = np.asarray(head.box_deltas(x))  # [B, H, W, A*4]
    for y, xx, k in [(0, 0, 0), (2, 3, 1), (5, 4, 2)]:
        row = (y * 5 + xx) * 3 + k
        assert logits[1, row] == pytest.approx(obj[1, y, xx, k], abs=1e-6)
        np.testing.assert_allclose(deltas[1, row], box[1, y, xx, 4 * k : 4 * k + 4], atol=1e-6)
    # Level 1 follows level 0.
    x1 = head.conv(feats[1])
    obj1 = np.asarray(head.objectness(x1))
    assert logits[0, 6 * 5 * 3 + (1 * 3 + 2) * 3 + 1] == pytest.approx(obj1[0, 1, 2, 1], abs=1e-6)
    restored = RPNHead.from_config(head.get_config())
    assert restored.num_anchors == 3 and restored.channels == 8


def _anchors():
    return np.concatenate(
        [
            np.asarray(grid_anchors((8, 8), 4, cell_anchors((8,), (0.5, 1.0, 2.0)))),
            np.asarray(grid_anchors((4, 4), 8, cell_anchors((16,), (0.5, 1.0, 2.0)))),
        ]
    )


def test_rpn_target_assigner_vs_numpy():
    anchors = _anchors()  # 240 anchors over a 32x32 image
    gt = np.array(
        [
            [[2, 3, 12, 10], [14, 14, 30, 31], [5, 20, 9, 24], [0, 0, 0, 0]],
            [[0, 0, 0, 0]] * 4,  # no ground truth
            [[1, 1, 31, 31], [20, 2, 24, 30], [0, 0, 0, 0], [0, 0, 0, 0]],
        ],
        np.float32,
    )
    valid = np.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], bool)
    assigner = RPNTargetAssigner(0.7, 0.3, batch_size_per_image=64, positive_fraction=0.5)
    labels, targets = assigner(anchors, gt, valid, seed=keras.random.SeedGenerator(0))
    labels, targets = np.asarray(labels), np.asarray(targets)
    assert labels.shape == (3, len(anchors)) and targets.shape == (3, len(anchors), 4)
    assert set(np.unique(labels)) <= {-1.0, 0.0, 1.0}
    for b in range(3):
        iou = ref_iou_matrix(anchors, gt[b])
        matches = ref_match_low_quality(iou, valid[b], 0.7, 0.3)
        pos, neg = matches >= 0, matches == -1
        n_pos = min(pos.sum(), 32)
        assert (labels[b] == 1).sum() == n_pos
        assert (labels[b] == 0).sum() == min(neg.sum(), 64 - n_pos)
        assert np.all(pos[labels[b] == 1]) and np.all(neg[labels[b] == 0])
        for i in np.flatnonzero(labels[b] == 1):
            np.testing.assert_allclose(
                targets[b, i], ref_encode(gt[b, matches[i]], anchors[i]), atol=1e-4
            )
        if b != 1:
            assert pos.sum() <= 32  # so every positive is sampled, and:
            for j in np.flatnonzero(valid[b]):
                best = np.flatnonzero(iou[:, j] == iou[:, j].max())
                assert np.all(labels[b, best] == 1), f"gt {j} of image {b} lost its best anchor"
                # ... and the low-quality rescue was really needed for some gt.
    assert ref_iou_matrix(anchors, gt[0][2:3]).max() < 0.7  # small gt: below fg threshold
    assert np.all(labels[1] != 1)
    assert (labels[1] == 0).sum() == 64


# --------------------------------------------------------------------------------------------


def _proposal_case(rng, batch=2, image_size=(32, 48)):
    h, w = image_size
    anchors_per_level = [
        np.asarray(grid_anchors((h // 4, w // 4), 4, cell_anchors((12,), (0.5, 1.0, 2.0)))),
        np.asarray(grid_anchors((h // 8, w // 8), 8, cell_anchors((24,), (0.5, 1.0, 2.0)))),
    ]
    total = sum(len(a) for a in anchors_per_level)
    logits = rng.normal(0, 2, (batch, total)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (batch, total, 4)).astype(np.float32)
    deltas[:, ::7, 2] = -6.0  # some boxes become tiny and fall below min_size
    return anchors_per_level, logits, deltas


@pytest.mark.parametrize("pre_n, post_n", [(60, 50), (15, 40)])
def test_proposal_generator_vs_numpy(pre_n, post_n):
    rng = np.random.default_rng(pre_n)
    image_size = (32, 48)
    anchors_per_level, logits, deltas = _proposal_case(rng, image_size=image_size)
    gen = ProposalGenerator(pre_n, post_n, nms_thresh=0.6, min_size=1.0)
    proposals, valid = gen(logits, deltas, anchors_per_level, image_size)
    proposals, valid = np.asarray(proposals), np.asarray(valid)
    assert proposals.shape == (2, post_n, 4) and valid.shape == (2, post_n)
    assert valid.dtype == bool
    for b in range(2):
        want = ref_proposals(
            logits[b], deltas[b], anchors_per_level, image_size, pre_n, post_n, 0.6, 1.0
        )
        n = int(valid[b].sum())
        assert n == len(want)
        assert np.all(valid[b, :n]) and not np.any(valid[b, n:])  # valid rows first
        assert np.all(proposals[b, n:] == 0)
        np.testing.assert_allclose(proposals[b, :n], np.stack([t[2] for t in want]), atol=1e-3)
        # Inside the image, at least min_size, and same-level pairs not above the NMS threshold.
        p = proposals[b, :n]
        assert np.all(p[:, 0::2] >= 0) and np.all(p[:, 0::2] <= image_size[1])
        assert np.all(p[:, 1::2] >= 0) and np.all(p[:, 1::2] <= image_size[0])
        assert np.all(p[:, 2] - p[:, 0] >= 1.0 - 1e-4) and np.all(p[:, 3] - p[:, 1] >= 1.0 - 1e-4)
        levels = [t[1] for t in want]
        for i in range(n):
            for j in range(i + 1, n):
                if levels[i] == levels[j]:
                    assert ref_iou(p[i], p[j]) <= 0.6 + 1e-5
    if pre_n == 15:  # at most 2 * 15 candidates for 40 slots: padding must occur
        assert not valid.all()
    else:  # with 60 per level, some cross-level overlap survives (levels don't suppress)
        assert valid.sum() > 0


def test_proposal_generator_levels_do_not_suppress_each_other():
    # Two levels with an identical anchor and zero deltas: both copies survive NMS.
    a = np.array([[4.0, 4.0, 20.0, 20.0]], np.float32)
    gen = ProposalGenerator(5, 4, nms_thresh=0.5)
    logits = np.array([[3.0, 2.0]], np.float32)
    proposals, valid = gen(logits, np.zeros((1, 2, 4), np.float32), [a, a], (32, 32))
    np.testing.assert_array_equal(np.asarray(valid)[0], [True, True, False, False])
    np.testing.assert_allclose(np.asarray(proposals)[0, :2], [a[0], a[0]])
    # Within one level the duplicate is suppressed.
    proposals, valid = gen(
        logits, np.zeros((1, 2, 4), np.float32), [np.concatenate([a, a])], (32, 32)
    )
    np.testing.assert_array_equal(np.asarray(valid)[0], [True, False, False, False])


# --------------------------------------------------------------------------------------------
# The feature pyramid that feeds the RPN.


def test_fpn_odd_sizes_shapes_and_top_down_merge():
    # C2..C5 of a 65 x 47 image through stride-2 "same" convolutions: ceil at every level.
    shapes = [(17, 12), (9, 6), (5, 3), (3, 2)]
    rng = np.random.default_rng(5)
    feats = [
        rng.normal(size=(2, h, w, 3 + i)).astype(np.float32) for i, (h, w) in enumerate(shapes)
    ]
    fpn = FeaturePyramid(channels=8)
    outs = [np.asarray(o) for o in fpn(feats)]
    assert [o.shape for o in outs] == [(2, h, w, 8) for h, w in shapes] + [(2, 2, 1, 8)]
    # Reference top-down pathway: nearest 2x upsampling (pixel (y, x) reads (y // 2, x // 2)),
    # added to the lateral, then each level's 3x3 conv; P6 subsamples P5 with stride 2.
    laterals = [np.asarray(conv(f)) for conv, f in zip(fpn.lateral_convs, feats, strict=True)]
    merged = [None] * 4
    merged[3] = laterals[3]
    for lvl in (2, 1, 0):
        h, w = shapes[lvl]
        coarse = merged[lvl + 1]
        up = np.zeros_like(laterals[lvl])
        for y in range(h):
            for x in range(w):
                up[:, y, x] = coarse[:, y // 2, x // 2]
        merged[lvl] = laterals[lvl] + up
    for lvl in range(4):
        want = np.asarray(fpn.output_convs[lvl](merged[lvl]))
        np.testing.assert_allclose(outs[lvl], want, atol=1e-5)
    np.testing.assert_allclose(outs[4], outs[3][:, ::2, ::2], atol=1e-6)
    no_p6 = FeaturePyramid(channels=4, extra_level=False)(feats)
    assert len(no_p6) == 4
