"""Anchors (kdetect.ops.anchors): py-faster-rcnn's published values, a loop transcription of its
generate_anchors, and the torchvision grid layout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdetect.ops.anchors import (
    cell_anchors,
    generate_base_anchors,
    grid_anchors,
    multilevel_anchors,
)

#: py-faster-rcnn's lib/rpn/generate_anchors.py, printed output for the defaults.
PUBLISHED = [
    [-84, -40, 99, 55],
    [-176, -88, 191, 103],
    [-360, -184, 375, 199],
    [-56, -56, 71, 71],
    [-120, -120, 135, 135],
    [-248, -248, 263, 263],
    [-36, -80, 51, 95],
    [-80, -168, 95, 183],
    [-168, -344, 183, 359],
]


def ref_generate_anchors(base_size, ratios, scales):
    """Loop transcription of py-faster-rcnn's generate_anchors (+1 pixel sizes, np.round)."""

    def whctrs(a):
        w = a[2] - a[0] + 1
        h = a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(w, h, xc, yc):
        return [xc - 0.5 * (w - 1), yc - 0.5 * (h - 1), xc + 0.5 * (w - 1), yc + 0.5 * (h - 1)]

    base = [0.0, 0.0, base_size - 1.0, base_size - 1.0]
    w, h, xc, yc = whctrs(base)
    size = w * h
    ratio_anchors = []
    for r in ratios:
        ws = np.round(np.sqrt(size / r))
        hs = np.round(ws * r)
        ratio_anchors.append(mk(ws, hs, xc, yc))
    out = []
    for a in ratio_anchors:
        w, h, xc, yc = whctrs(a)
        for s in scales:
            out.append(mk(w * s, h * s, xc, yc))
    return np.array(out, dtype=np.float64)


def test_generate_base_anchors_published_values():
    got = generate_base_anchors()
    assert got.shape == (9, 4)
    np.testing.assert_array_equal(got, np.array(PUBLISHED, dtype=np.float64))


@pytest.mark.parametrize(
    "base_size, ratios, scales",
    [
        (16, (0.5, 1, 2), (8, 16, 32)),
        (8, (0.5, 1, 2), (2, 4)),
        (16, (0.25, 0.5, 1, 2, 4), (4, 8, 16, 32)),
        (10, (1 / 3, 1.5, 3), (1, 3)),
        (7, (0.7,), (5,)),
    ],
)
def test_generate_base_anchors_vs_transcription(base_size, ratios, scales):
    got = generate_base_anchors(base_size, ratios, scales)
    want = ref_generate_anchors(base_size, ratios, scales)
    assert got.shape == (len(ratios) * len(scales), 4)
    np.testing.assert_array_equal(got, want)


def test_cell_anchors_area_ratio_and_order():
    sizes = (32, 64, 128)
    ratios = (0.5, 1.0, 2.0)
    anchors = cell_anchors(sizes, ratios)
    assert anchors.shape == (9, 4) and anchors.dtype == np.float32
    i = 0
    for r in ratios:  # ratio slowest, size fastest
        for s in sizes:
            x1, y1, x2, y2 = anchors[i].astype(np.float64)
            w, h = x2 - x1, y2 - y1
            assert w * h == pytest.approx(s * s, rel=0.05)  # corners rounded to whole pixels
            assert h / w == pytest.approx(r, rel=0.05)
            assert (x1 + x2) == pytest.approx(0.0, abs=1.0)  # zero centred
            assert (y1 + y2) == pytest.approx(0.0, abs=1.0)
            # Exactly torchvision's values: round(+-size/sqrt(r)/2), round(+-size*sqrt(r)/2).
            want = np.round(
                np.array([-s / math.sqrt(r), -s * math.sqrt(r), s / math.sqrt(r), s * math.sqrt(r)])
                / 2.0
            )
            np.testing.assert_allclose(anchors[i], want)
            i += 1
    np.testing.assert_array_equal(anchors[4], [-32, -32, 32, 32])


def test_grid_anchors_layout():
    base = cell_anchors((16, 40), (0.5, 1.0, 2.0))
    num = base.shape[0]
    height, width, stride = 3, 5, 8
    grid = grid_anchors((height, width), stride, base)
    assert grid.shape == (height * width * num, 4) and grid.dtype == np.float32
    for y in range(height):
        for x in range(width):
            for k in range(num):
                row = (y * width + x) * num + k
                want = base[k] + np.array([x * stride, y * stride, x * stride, y * stride])
                np.testing.assert_array_equal(grid[row], want)


def test_grid_anchors_non_square_stride():
    base = np.array([[-2.0, -3.0, 2.0, 3.0]], np.float32)
    grid = grid_anchors((2, 3), (4, 6), base)  # (stride_y, stride_x)
    # Row (y=1, x=2): shifted by x*6 = 12, y*4 = 4.
    np.testing.assert_array_equal(grid[1 * 3 + 2], [10.0, 1.0, 14.0, 7.0])


def test_multilevel_anchors():
    sizes = ((32,), (64,), (128,))
    feature_sizes = [(8, 6), (4, 3), (2, 2)]
    strides = [4, 8, 16]
    levels = multilevel_anchors(feature_sizes, strides, sizes, (0.5, 1.0, 2.0))
    assert [lvl.shape for lvl in levels] == [(8 * 6 * 3, 4), (4 * 3 * 3, 4), (2 * 2 * 3, 4)]
    for lvl, fs, st, sz in zip(levels, feature_sizes, strides, sizes, strict=True):
        np.testing.assert_array_equal(lvl, grid_anchors(fs, st, cell_anchors(sz, (0.5, 1.0, 2.0))))
        # Last cell's middle anchor (ratio 1) is centred on ((W-1)*stride, (H-1)*stride).
        c = lvl[-2]
        assert (c[0] + c[2]) / 2 == (fs[1] - 1) * st
        assert (c[1] + c[3]) / 2 == (fs[0] - 1) * st
    with pytest.raises(ValueError, match="one anchor size tuple per feature level"):
        multilevel_anchors(feature_sizes, strides, sizes[:2], (1.0,))
