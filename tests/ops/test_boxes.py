"""Box math (kdetect.ops.boxes) against independent NumPy references written here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdetect.ops.boxes import (
    DEFAULT_SCALE_CLIP,
    BoxCoder,
    box_area,
    center_to_xyxy,
    clip_boxes,
    pairwise_iou,
    xywh_to_xyxy,
    xyxy_to_center,
    xyxy_to_xywh,
    xyxy_to_yxyx,
    yxyx_to_xyxy,
)
from tests.helpers import ref_iou, ref_iou_matrix

SCALE_CLIP = math.log(1000.0 / 16)  # torchvision's bbox_xform_clip

# --------------------------------------------------------------------------------------------
# NumPy references (plain loops, continuous-coordinate convention: width = x2 - x1).


def ref_encode(box, ref, weights):
    wx, wy, ww, wh = weights
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = box[0] + 0.5 * w, box[1] + 0.5 * h
    rw, rh = ref[2] - ref[0], ref[3] - ref[1]
    rcx, rcy = ref[0] + 0.5 * rw, ref[1] + 0.5 * rh
    return np.array(
        [wx * (cx - rcx) / rw, wy * (cy - rcy) / rh, ww * math.log(w / rw), wh * math.log(h / rh)]
    )


def ref_decode(delta, ref, weights, clip=SCALE_CLIP):
    wx, wy, ww, wh = weights
    rw, rh = ref[2] - ref[0], ref[3] - ref[1]
    rcx, rcy = ref[0] + 0.5 * rw, ref[1] + 0.5 * rh
    dw = min(delta[2] / ww, clip)
    dh = min(delta[3] / wh, clip)
    cx = delta[0] / wx * rw + rcx
    cy = delta[1] / wy * rh + rcy
    w = math.exp(dw) * rw
    h = math.exp(dh) * rh
    return np.array([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h])


def random_boxes(rng, n, size=100.0, min_side=1.0):
    x1 = rng.uniform(0, size, n)
    y1 = rng.uniform(0, size, n)
    w = rng.uniform(min_side, size / 2, n)
    h = rng.uniform(min_side, size / 2, n)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


# --------------------------------------------------------------------------------------------


def test_format_conversions_known_values_and_round_trips():
    xyxy = np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 3.0]], np.float32)
    np.testing.assert_allclose(np.asarray(xyxy_to_xywh(xyxy)), [[10, 20, 40, 60], [0, 0, 1, 3]])
    np.testing.assert_allclose(
        np.asarray(xyxy_to_center(xyxy)), [[30, 50, 40, 60], [0.5, 1.5, 1, 3]]
    )
    np.testing.assert_allclose(np.asarray(xyxy_to_yxyx(xyxy)), [[20, 10, 80, 50], [0, 0, 3, 1]])
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, 30).reshape(2, 3, 5, 4)  # several leading axes
    for fwd, back in (
        (xyxy_to_xywh, xywh_to_xyxy),
        (xyxy_to_center, center_to_xyxy),
        (xyxy_to_yxyx, yxyx_to_xyxy),
    ):
        out = np.asarray(back(fwd(boxes)))
        assert out.shape == boxes.shape
        np.testing.assert_allclose(out, boxes, rtol=1e-6, atol=1e-4)


def test_box_area_degenerate_is_zero():
    boxes = np.array([[0, 0, 4, 5], [3, 3, 3, 9], [5, 5, 2, 9], [1, 1, 2, 0]], np.float32)
    np.testing.assert_allclose(np.asarray(box_area(boxes)), [20, 0, 0, 0])


def test_pairwise_iou_matches_numpy_random_and_degenerate():
    rng = np.random.default_rng(1)
    b1 = random_boxes(rng, 17)
    b2 = random_boxes(rng, 11)
    # Degenerate / zero-area boxes, identical boxes, disjoint boxes, touching boxes.
    b1[0] = [5, 5, 5, 5]
    b1[1] = [10, 10, 10, 30]
    b1[2] = [20, 20, 10, 10]  # inverted
    b2[0] = [5, 5, 5, 5]
    b2[1] = b1[3]
    b2[2] = [b1[4, 2], b1[4, 1], b1[4, 2] + 10, b1[4, 3]]  # touches b1[4] on its right edge
    got = np.asarray(pairwise_iou(b1, b2))
    want = ref_iou_matrix(b1.astype(np.float64), b2.astype(np.float64))
    assert got.shape == (17, 11)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got[1, 1] == pytest.approx(ref_iou(b1[1], b1[3]))
    assert got[3, 1] == pytest.approx(1.0, abs=1e-6)
    assert got[0, 0] == 0.0  # empty union -> 0, never NaN
    assert got[4, 2] == 0.0
    assert np.all(np.isfinite(got))
    # A hand-worked pair: [0,0,2,2] vs [1,1,3,3]: 1 / 7.
    assert float(pairwise_iou(np.array([[0.0, 0, 2, 2]]), np.array([[1.0, 1, 3, 3]]))[0, 0]) == (
        pytest.approx(1 / 7)
    )


def test_pairwise_iou_batched():
    rng = np.random.default_rng(2)
    b1 = random_boxes(rng, 3 * 6).reshape(3, 6, 4)
    b2 = random_boxes(rng, 3 * 4).reshape(3, 4, 4)
    got = np.asarray(pairwise_iou(b1, b2))
    assert got.shape == (3, 6, 4)
    for b in range(3):
        np.testing.assert_allclose(got[b], ref_iou_matrix(b1[b], b2[b]), atol=1e-5)


def test_clip_boxes():
    boxes = np.array(
        [[-5.0, -3.0, 20.0, 50.0], [10.0, 10.0, 200.0, 200.0], [1.0, 2.0, 3.0, 4.0]], np.float32
    )
    got = np.asarray(clip_boxes(boxes, 40, 30))  # height 40, width 30
    want = [[0, 0, 20, 40], [10, 10, 30, 40], [1, 2, 3, 4]]
    np.testing.assert_allclose(got, want)
    rng = np.random.default_rng(3)
    many = rng.uniform(-50, 150, (2, 20, 4)).astype(np.float32)
    got = np.asarray(clip_boxes(many, 64, 96))
    want = many.copy()
    want[..., 0::2] = np.clip(want[..., 0::2], 0, 96)
    want[..., 1::2] = np.clip(want[..., 1::2], 0, 64)
    np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_encode_matches_formula_and_round_trips(weights):
    rng = np.random.default_rng(4)
    boxes = random_boxes(rng, 40)
    refs = random_boxes(rng, 40)
    coder = BoxCoder(weights)
    deltas = np.asarray(coder.encode(boxes, refs))
    want = np.stack([ref_encode(b, r, weights) for b, r in zip(boxes, refs, strict=True)])
    np.testing.assert_allclose(deltas, want, rtol=1e-4, atol=1e-4)
    back = np.asarray(coder.decode(deltas, refs))
    np.testing.assert_allclose(back, boxes, rtol=1e-4, atol=1e-3)
    # Batched shapes with leading axes work the same.
    deltas_b = np.asarray(coder.encode(boxes.reshape(4, 10, 4), refs.reshape(4, 10, 4)))
    np.testing.assert_allclose(deltas_b.reshape(40, 4), want, rtol=1e-4, atol=1e-4)


def test_box_coder_decode_matches_numpy_and_clamps_scale():
    rng = np.random.default_rng(5)
    refs = random_boxes(rng, 25)
    weights = (10.0, 10.0, 5.0, 5.0)
    deltas = rng.normal(0, 2, (25, 4)).astype(np.float32)
    deltas[0, 2] = 1e4  # would overflow exp without the clamp
    deltas[1, 3] = 50.0
    got = np.asarray(BoxCoder(weights).decode(deltas, refs))
    want = np.stack([ref_decode(d, r, weights) for d, r in zip(deltas, refs, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert np.all(np.isfinite(got))
    # The clamp: width of box 0 is exactly (1000 / 16) times its reference width.
    assert DEFAULT_SCALE_CLIP == pytest.approx(math.log(1000.0 / 16))
    ref_w = refs[0, 2] - refs[0, 0]
    assert got[0, 2] - got[0, 0] == pytest.approx(ref_w * 1000.0 / 16, rel=1e-5)
    ref_h = refs[1, 3] - refs[1, 1]
    assert got[1, 3] - got[1, 1] == pytest.approx(ref_h * 1000.0 / 16, rel=1e-5)
    # A 16 px anchor never grows past 1000 px, whatever the delta.
    anchor = np.array([[0.0, 0.0, 16.0, 16.0]], np.float32)
    huge = np.array([[0.0, 0.0, 1e6, 1e6]], np.float32)
    out = np.asarray(BoxCoder().decode(huge, anchor))[0]
    assert out[2] - out[0] == pytest.approx(1000.0, rel=1e-5)
    assert out[3] - out[1] == pytest.approx(1000.0, rel=1e-5)
    # Negative deltas are not clamped (boxes may shrink).
    tiny = np.array([[0.0, 0.0, -10.0, -10.0]], np.float32)
    out = np.asarray(BoxCoder().decode(tiny, anchor))[0]
    assert out[2] - out[0] == pytest.approx(16.0 * math.exp(-10.0), rel=1e-2)  # float32


def test_box_coder_zero_deltas_are_identity_and_known_value():
    refs = np.array([[10.0, 20.0, 30.0, 60.0]], np.float32)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    np.testing.assert_allclose(np.asarray(coder.decode(np.zeros((1, 4)), refs)), refs)
    # Shift centre by half a width right, double the height.
    target = np.array([[20.0, 0.0, 40.0, 80.0]], np.float32)
    np.testing.assert_allclose(
        np.asarray(coder.encode(target, refs)), [[5.0, 0.0, 0.0, 5 * math.log(2)]], atol=1e-5
    )
