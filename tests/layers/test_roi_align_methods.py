"""Both RoIAlign implementations (gather and crop_and_resize) against the NumPy reference of
tests/roi_reference.py: values, every pyramid level, the clamp/zero boundaries, and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kdetect.layers.roi import MultiLevelRoIAlign
from tests.roi_reference import (
    multilevel_boxes,
    random_pyramid,
    ref_multilevel_roi_align,
    ref_roi_align_matrix,
)

METHODS = ["gather", "crop_and_resize"]


def test_auto_picks_crop_and_resize_on_tensorflow():
    assert MultiLevelRoIAlign([8]).resolve_method() == "crop_and_resize"
    assert MultiLevelRoIAlign([8], method="gather").resolve_method() == "gather"
    with pytest.raises(ValueError, match="method"):
        MultiLevelRoIAlign([8], method="bilinear")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sr,out_size", [(1, 1), (2, 7), (3, 4)])
def test_single_level_with_boundaries(method, sr, out_size):
    rng = np.random.default_rng(20 + sr)
    feats = rng.normal(size=(2, 9, 13, 4)).astype(np.float32)
    # Boxes straddling every border: samples in [-1, 0) and (H - 1, H] clamp to the edge,
    # samples beyond read 0; tiny and huge boxes too.
    boxes = np.array(
        [
            [[-20, -20, 30, 30], [60, 40, 120, 90], [-8, 30, 110, 80], [10, 10, 10.5, 10.5]],
            [[-100, -60, 200, 160], [0, 0, 104, 72], [50, -12, 60, 4], [98, 66, 108, 78]],
        ],
        np.float32,
    )
    want, _ = ref_multilevel_roi_align([feats], boxes, [8], out_size, sr)
    layer = MultiLevelRoIAlign([8], output_size=out_size, sampling_ratio=sr, method=method)
    got = np.asarray(layer([feats], boxes))
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_multilevel(method):
    rng = np.random.default_rng(21)
    feats, strides = random_pyramid(rng)
    boxes = multilevel_boxes(rng, 2, 40, (128, 96))
    want, levels = ref_multilevel_roi_align(feats, boxes, strides, 7, 2)
    assert set(levels.ravel().tolist()) == {0, 1, 2, 3}
    layer = MultiLevelRoIAlign(strides, output_size=7, sampling_ratio=2, method=method)
    np.testing.assert_allclose(np.asarray(layer(feats, boxes)), want, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_gradients(method):
    rng = np.random.default_rng(22)
    feats_np, strides = random_pyramid(rng, batch=2, size=(64, 64), channels=2)
    boxes = multilevel_boxes(rng, 2, 8, (64, 64)) * 4.0
    layer = MultiLevelRoIAlign(strides, output_size=3, sampling_ratio=2, method=method)
    grad_out = rng.normal(size=(2, 8, 3, 3, 2)).astype(np.float32)
    feats = [tf.Variable(f) for f in feats_np]

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(feats, boxes) * grad_out)
        return tape.gradient(loss, feats)

    got = grads()
    want = [np.zeros(f.shape) for f in feats_np]
    _, levels = ref_multilevel_roi_align(feats_np, boxes, strides, 3, 2)
    for b in range(2):
        for r in range(8):
            li = levels[b, r]
            _, h, w, c = feats_np[li].shape
            m = ref_roi_align_matrix(boxes[b, r], h, w, 1.0 / strides[li], 3, 2)
            want[li][b] += (m.T @ grad_out[b, r].reshape(9, c)).reshape(h, w, c)
    for g, wg in zip(got, want, strict=True):
        g = np.zeros(wg.shape) if g is None else np.asarray(tf.convert_to_tensor(g))
        np.testing.assert_allclose(g, wg, atol=1e-4)


def test_gather_compiles_with_xla_and_matches_crop_and_resize():
    rng = np.random.default_rng(23)
    feats, strides = random_pyramid(rng)
    boxes = multilevel_boxes(rng, 2, 16, (128, 96))
    layer = MultiLevelRoIAlign(strides, method="gather")
    xla = tf.function(lambda f, b: layer(f, b), jit_compile=True)
    got = np.asarray(xla(feats, boxes))
    want = np.asarray(layer(feats, boxes, method="crop_and_resize"))
    np.testing.assert_allclose(got, want, atol=1e-4)
