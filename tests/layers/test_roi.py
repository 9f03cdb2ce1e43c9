"""RoI stage (kdetect.layers.roi): RoIAlign against a NumPy loop reference (Detectron2
aligned=True, torchvision bilinear boundary rules, FPN level assignment), RoISampler, heads."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdetect.layers import BoxPredictor, MLPBoxHead, MultiLevelRoIAlign, RoISampler
from tests.helpers import ref_iou
from tests.roi_reference import (
    multilevel_boxes,
    random_pyramid,
    ref_multilevel_roi_align,
    ref_roi_align_matrix,
)

# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sr, out_size", [(2, 7), (1, 4), (3, 2)])
def test_roi_align_single_level_vs_numpy(sr, out_size):
    rng = np.random.default_rng(sr)
    feat = rng.normal(size=(2, 10, 13, 3)).astype(np.float32)
    stride = 16  # image 160 x 208
    boxes = np.array(
        [
            [
                [10, 20, 90, 70],
                [0, 0, 208, 160],  # the whole image
                [-40, -30, 50, 40],  # partly outside, top-left
                [150, 100, 260, 200],  # partly outside, bottom-right
                [33.3, 41.7, 34.1, 42.0],  # tiny
                [-80, -80, -10, -20],  # fully outside (reads zeros except near the edge)
                [200, 150, 208, 160],  # at the last pixel
            ],
            [
                [5.5, 7.25, 120.0, 99.0],
                [100, 10, 200, 150],
                [0, 150, 16, 176],
                [-8, -8, 8, 8],
                [64, 64, 64, 64],  # zero area
                [190, 0, 300, 20],
                [1, 1, 207, 159],
            ],
        ],
        np.float32,
    )
    layer = MultiLevelRoIAlign([stride], output_size=out_size, sampling_ratio=sr)
    got = np.asarray(layer([feat], boxes))
    want, _ = ref_multilevel_roi_align([feat], boxes, [stride], out_size, sr)
    assert got.shape == (2, 7, out_size, out_size, 3)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(want[0, 2]).sum() > 0  # partly outside boxes still read the map


def test_roi_align_multilevel_vs_numpy():
    rng = np.random.default_rng(10)
    feats, strides = random_pyramid(rng)
    boxes = multilevel_boxes(rng, 2, 24, (128, 96))
    # Level boundaries: sqrt(area) = 112 -> level 3, 224 -> 4, 448 -> 5; just below: one less.
    boxes[0, :6] = [
        [0, 0, 112, 112],
        [0, 0, 111.9, 112],
        [-50, -50, 174, 174],
        [-50, -50, 173.9, 174],
        [-200, -200, 248, 248],
        [-200, -200, 247.9, 248],
    ]
    layer = MultiLevelRoIAlign(strides, output_size=7, sampling_ratio=2, min_level=2)
    got_levels = np.asarray(layer.assign_levels(boxes))
    want, want_levels = ref_multilevel_roi_align(feats, boxes, strides, 7, 2)
    np.testing.assert_array_equal(got_levels, want_levels)
    np.testing.assert_array_equal(got_levels[0, :6], [1, 0, 2, 1, 3, 2])
    assert set(want_levels.ravel().tolist()) == {0, 1, 2, 3}  # every level is exercised
    got = np.asarray(layer(feats, boxes))
    assert got.shape == (2, 24, 7, 7, 3)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_roi_align_batch_images_read_their_own_features():
    # Image 1's features are image 0's plus 100: pooled values must differ by exactly 100 where
    # all samples are inside the map.
    rng = np.random.default_rng(11)
    f0 = rng.normal(size=(1, 8, 8, 2)).astype(np.float32)
    feats = [np.concatenate([f0, f0 + 100.0])]
    boxes = np.tile(np.array([[[8.0, 8.0, 40.0, 56.0]]], np.float32), (2, 1, 1))
    got = np.asarray(MultiLevelRoIAlign([8], output_size=3)(feats, boxes))
    np.testing.assert_allclose(got[1] - got[0], 100.0, atol=1e-3)


def test_roi_align_gradients_match_reference():
    rng = np.random.default_rng(12)
    feats_np, strides = random_pyramid(rng, batch=2, size=(64, 64), channels=2)
    boxes = multilevel_boxes(rng, 2, 6, (64, 64)) * 4.0  # big enough for coarse levels too
    layer = MultiLevelRoIAlign(strides, output_size=3, sampling_ratio=2)
    grad_out = rng.normal(size=(2, 6, 3, 3, 2)).astype(np.float32)
    feats = [tf.Variable(f) for f in feats_np]
    with tf.GradientTape() as tape:
        pooled = layer(feats, boxes)
        loss = tf.reduce_sum(pooled * grad_out)
    grads = tape.gradient(loss, feats)
    assert any(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)
    # Reference gradient: M^T @ G, scattered onto the level each RoI reads.
    want = [np.zeros(f.shape) for f in feats_np]
    _, levels = ref_multilevel_roi_align(feats_np, boxes, strides, 3, 2)
    for b in range(2):
        for r in range(6):
            li = levels[b, r]
            _, h, w, c = feats_np[li].shape
            m = ref_roi_align_matrix(boxes[b, r], h, w, 1.0 / strides[li], 3, 2)
            want[li][b] += (m.T @ grad_out[b, r].reshape(9, c)).reshape(h, w, c)
    for g, wg in zip(grads, want, strict=True):
        got = np.zeros(wg.shape) if g is None else np.asarray(tf.convert_to_tensor(g))
        np.testing.assert_allclose(got, wg, atol=1e-4)


# --------------------------------------------------------------------------------------------
# RoISampler


def ref_decode(d, ref, weights=(10.0, 10.0, 5.0, 5.0)):
    rw, rh = ref[2] - ref[0], ref[3] - ref[1]
    cx = d[0] / weights[0] * rw + ref[0] + rw / 2
    cy = d[1] / weights[1] * rh + ref[1] + rh / 2
    w = math.exp(d[2] / weights[2]) * rw
    h = math.exp(d[3] / weights[3]) * rh
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _sampler_case(rng):
    gt = np.array(
        [
            [[10, 10, 40, 50], [60, 20, 100, 90], [5, 70, 30, 95], [0, 0, 0, 0]],
            [[20, 20, 80, 80], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
            [[0, 0, 0, 0]] * 4,  # no objects
        ],
        np.float32,
    )
    labels = np.array([[3, 0, 7, -1], [5, -1, -1, -1], [-1, -1, -1, -1]], np.int32)
    n = 60
    proposals = np.zeros((3, n, 4), np.float32)
    for b in range(3):
        for i in range(n):
            g = gt[b, rng.integers(0, max(1, (labels[b] >= 0).sum()))]
            if labels[b].max() < 0 or i % 3 == 0:
                x, y = rng.uniform(0, 90, 2)
                proposals[b, i] = [x, y, x + rng.uniform(4, 30), y + rng.uniform(4, 30)]
            else:  # jittered copies of a gt: many foreground candidates
                s = np.array([g[2] - g[0], g[3] - g[1], g[2] - g[0], g[3] - g[1]])
                proposals[b, i] = g + rng.normal(0, 0.12, 4) * s
    valid = np.ones((3, n), bool)
    valid[:, -10:] = False
    proposals[:, -10:] = 0.0
    return proposals, valid, gt, labels


@pytest.mark.parametrize("batch_size, fraction", [(32, 0.25), (96, 0.5)])
def test_roi_sampler(batch_size, fraction):
    rng = np.random.default_rng(batch_size)
    proposals, valid, gt, labels = _sampler_case(rng)
    sampler = RoISampler(0.5, 0.5, batch_size_per_image=batch_size, positive_fraction=fraction)
    out = sampler(proposals, valid, gt, labels, seed=keras.random.SeedGenerator(1))
    rois, lab = np.asarray(out["rois"]), np.asarray(out["labels"])
    targets, weights = np.asarray(out["box_targets"]), np.asarray(out["weights"])
    assert rois.shape == (3, batch_size, 4) and targets.shape == (3, batch_size, 4)
    assert lab.shape == weights.shape == (3, batch_size) and lab.dtype == np.int32
    for b in range(3):
        gt_ok = labels[b] >= 0
        cands = [proposals[b, i] for i in range(len(proposals[b])) if valid[b, i]]
        cands += [gt[b, j] for j in range(4) if gt_ok[j]]  # ground truth appended
        best = [
            max((ref_iou(c, gt[b, j]) for j in range(4) if gt_ok[j]), default=0.0) for c in cands
        ]
        n_pos = min(sum(v >= 0.5 for v in best), int(batch_size * fraction))
        n_neg = min(sum(v < 0.5 for v in best), batch_size - n_pos)
        fg = (lab[b] > 0) & (weights[b] == 1)
        assert fg.sum() == n_pos and np.all(lab[b][weights[b] == 0] == 0)
        assert ((lab[b] == 0) & (weights[b] == 1)).sum() == n_neg
        assert weights[b].sum() == n_pos + n_neg <= batch_size
        for r in np.flatnonzero(weights[b]):
            # Every sampled RoI is a real candidate (no padded proposal or padded gt).
            assert any(np.allclose(rois[b, r], c) for c in cands)
            ious = [ref_iou(rois[b, r], gt[b, j]) if gt_ok[j] else -1 for j in range(4)]
            j = int(np.argmax(ious))
            if lab[b, r] > 0:
                assert ious[j] >= 0.5 and lab[b, r] == labels[b, j] + 1
                np.testing.assert_allclose(
                    ref_decode(targets[b, r].astype(np.float64), rois[b, r].astype(np.float64)),
                    gt[b, j],
                    atol=1e-2,
                )
            else:
                assert max(ious) < 0.5
    if batch_size == 32:  # enough foreground to fill the quota in image 0
        assert ((lab[0] > 0) & (weights[0] == 1)).sum() == int(batch_size * fraction)
    else:  # 60 proposals + 4 gt < 96 rows: every valid candidate sampled, the rest is filler
        assert np.all(weights.sum(axis=1) == [53, 51, 50])
    # Image 2 (no objects) is all background.
    assert np.all(lab[2] == 0) and weights[2].sum() == min(50, batch_size)


def test_roi_sampler_appends_ground_truth():
    # Proposals far from the objects: the only foreground RoIs are the ground-truth boxes.
    gt = np.array([[[10, 10, 30, 30], [50, 50, 90, 70], [0, 0, 0, 0]]], np.float32)
    labels = np.array([[2, 0, -1]], np.int32)
    proposals = np.tile(np.array([[200.0, 200.0, 220.0, 230.0]], np.float32), (1, 20, 1))
    proposals += np.arange(20, dtype=np.float32)[None, :, None]
    out = RoISampler(batch_size_per_image=16, positive_fraction=0.5)(
        proposals, np.ones((1, 20), bool), gt, labels, seed=keras.random.SeedGenerator(0)
    )
    lab, w, rois = (
        np.asarray(out["labels"])[0],
        np.asarray(out["weights"])[0],
        np.asarray(out["rois"])[0],
    )
    fg = np.flatnonzero((lab > 0) & (w == 1))
    assert len(fg) == 2
    got = sorted(map(tuple, rois[fg].tolist()))
    assert got == sorted([tuple(gt[0, 0].tolist()), tuple(gt[0, 1].tolist())])
    assert sorted(lab[fg].tolist()) == [1, 3]
    np.testing.assert_allclose(np.asarray(out["box_targets"])[0, fg], 0.0, atol=1e-5)
    assert w.sum() == 16  # 2 fg + 14 of the 20 background proposals


def test_box_head_and_predictor_shapes():
    head = MLPBoxHead(units=16)
    pred = BoxPredictor(num_classes=4)
    x = np.random.default_rng(0).normal(size=(2, 5, 3, 3, 4)).astype(np.float32)
    feats = head(x)
    assert tuple(feats.shape) == (2, 5, 16)
    logits, deltas = pred(feats)
    assert tuple(logits.shape) == (2, 5, 5) and tuple(deltas.shape) == (2, 5, 4, 4)
    assert MLPBoxHead.from_config(head.get_config()).units == 16
    assert BoxPredictor.from_config(pred.get_config()).num_classes == 4


def test_roi_sampler_in_tf_function_static_and_dynamic_shapes():
    rng = np.random.default_rng(4)
    proposals, valid, gt, labels = _sampler_case(rng)
    sampler = RoISampler(batch_size_per_image=96, positive_fraction=0.5)
    seed = keras.random.SeedGenerator(2)

    # Static shapes with fewer candidates (64) than rows (96): padded, as in eager mode.
    static = tf.function(lambda p, v, g, lab: sampler(p, v, g, lab, seed=seed))
    out = static(proposals, valid, gt, labels)
    assert tuple(out["rois"].shape) == (3, 96, 4)
    np.testing.assert_array_equal(np.asarray(out["weights"]).sum(axis=1), [53, 51, 50])

    # An unknown number of ground-truth boxes (padded_batch without a fixed size) still traces.
    small = RoISampler(batch_size_per_image=32, positive_fraction=0.25)
    dynamic = tf.function(
        lambda p, v, g, lab: small(p, v, g, lab, seed=seed),
        input_signature=[
            tf.TensorSpec([None, 60, 4], tf.float32),
            tf.TensorSpec([None, 60], tf.bool),
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
        ],
    )
    out = dynamic(proposals, valid, gt, labels)
    assert tuple(out["rois"].shape) == (3, 32, 4)
    eager = small(proposals, valid, gt, labels, seed=keras.random.SeedGenerator(9))
    np.testing.assert_array_equal(  # the counts do not depend on the random draw
        np.asarray(out["weights"]).sum(axis=1), np.asarray(eager["weights"]).sum(axis=1)
    )
    assert np.asarray(out["weights"]).sum() > 2 * 32
