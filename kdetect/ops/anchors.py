"""Anchor boxes: py-faster-rcnn's base anchors and per-level anchor grids.

Two layouts are provided:

* :func:`generate_base_anchors` reproduces py-faster-rcnn's ``generate_anchors`` exactly (its
  +1 pixel sizes and NumPy's round-half-to-even), the reference the original paper's models and
  Luminoth used.
* :func:`grid_anchors` / :func:`multilevel_anchors` build the anchors the model uses, in the
  torchvision/Detectron2 layout: for each feature-map cell in row-major order, every
  (aspect ratio, size) pair with the ratio varying slowest, centred on ``(x * stride, y * stride)``.
  This order matches a head's ``[H, W, A * 4]`` output reshaped to ``[H * W * A, 4]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import ops


def _whctrs(anchor: np.ndarray) -> tuple[float, float, float, float]:
    """Width, height and centre of a box in py-faster-rcnn's inclusive-pixel convention."""
    w = anchor[2] - anchor[0] + 1
    h = anchor[3] - anchor[1] + 1
    return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)


def _make_anchors(ws: np.ndarray, hs: np.ndarray, x_ctr: float, y_ctr: float) -> np.ndarray:
    """Boxes of widths ``ws`` and heights ``hs`` around a centre, inclusive-pixel corners."""
    ws = ws[:, None]
    hs = hs[:, None]
    return np.hstack(
        [
            x_ctr - 0.5 * (ws - 1),
            y_ctr - 0.5 * (hs - 1),
            x_ctr + 0.5 * (ws - 1),
            y_ctr + 0.5 * (hs - 1),
        ]
    )


def generate_base_anchors(
    base_size: int = 16,
    ratios: Sequence[float] = (0.5, 1, 2),
    scales: Sequence[float] = (8, 16, 32),
) -> np.ndarray:
    """py-faster-rcnn's anchors for one cell: float64 [len(ratios) * len(scales), 4].

    Algorithm: start from the cell ``[0, 0, base_size - 1, base_size - 1]``; for each aspect ratio
    (h / w) keep the area and round the new width ``round(sqrt(area / ratio))`` and height
    ``round(width * ratio)``; then multiply each such box's sides by every scale, keeping the
    centre. Ratios vary slowest, scales fastest.
    """
    base = np.array([0, 0, base_size - 1, base_size - 1], dtype=np.float64)
    w, h, x_ctr, y_ctr = _whctrs(base)
    size_ratios = (w * h) / np.asarray(ratios, dtype=np.float64)
    ws = np.round(np.sqrt(size_ratios))
    hs = np.round(ws * np.asarray(ratios, dtype=np.float64))
    ratio_anchors = _make_anchors(ws, hs, x_ctr, y_ctr)
    scales = np.asarray(scales, dtype=np.float64)
    out = []
    for anchor in ratio_anchors:
        w, h, x_ctr, y_ctr = _whctrs(anchor)
        out.append(_make_anchors(w * scales, h * scales, x_ctr, y_ctr))
    return np.vstack(out)


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """Zero-centred anchors for one cell, float32 [len(aspect_ratios) * len(sizes), 4].

    An anchor of size ``s`` and aspect ratio ``r = h / w`` has area ``s ** 2``: ``h = s * sqrt(r)``,
    ``w = s / sqrt(r)``. Corners are rounded to whole pixels as in torchvision.
    """
    sizes = np.asarray(sizes, dtype=np.float32)
    ratios = np.asarray(aspect_ratios, dtype=np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = 1.0 / h_ratios
    ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2.0).astype(np.float32)


def grid_anchors(feature_size, stride, base_anchors):
    """Shift ``base_anchors`` [A, 4] over a ``feature_size`` (H, W) grid with the given stride.

    ``feature_size`` and ``stride`` (one value or ``(stride_y, stride_x)``) may be Python ints or
    scalar tensors, so anchors can follow feature maps whose size is only known when the graph
    runs. Returns float32 [H * W * A, 4] in ``xyxy`` pixels, cells in row-major order, anchors
    fastest.
    """
    height, width = feature_size
    scalar = np.isscalar(stride) or ops.ndim(stride) == 0
    stride_y, stride_x = (stride, stride) if scalar else stride
    shift_x = ops.cast(ops.arange(width), "float32") * ops.cast(stride_x, "float32")
    shift_y = ops.cast(ops.arange(height), "float32") * ops.cast(stride_y, "float32")
    sy, sx = ops.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = ops.reshape(ops.stack([sx, sy, sx, sy], axis=-1), (-1, 1, 4))
    base = ops.convert_to_tensor(np.asarray(base_anchors, np.float32))
    return ops.reshape(shifts + base[None, :, :], (-1, 4))


def feature_strides(image_size, feature_size):
    """Per-axis stride of a feature map as torchvision computes it: ``image // feature``.

    For strides that divide the frame this is the nominal stride; for a level made by
    subsampling (FPN's P6 of a frame that is not a multiple of 64) it is the integer quotient,
    e.g. 800 // 13 = 61, which is what torchvision's anchor generator uses.
    """
    return image_size[0] // feature_size[0], image_size[1] // feature_size[1]


def feature_map_anchors(
    image_size,
    feature_sizes,
    sizes: Sequence[Sequence[float]],
    aspect_ratios: Sequence[float],
) -> list:
    """Anchors of every level for feature maps of ``feature_sizes`` over an ``image_size``
    frame (ints or scalar tensors): a list of float32 [H_l * W_l * A, 4] tensors."""
    if len(feature_sizes) != len(sizes):
        raise ValueError(
            f"need one anchor size tuple per feature level: got {len(sizes)} size tuples for "
            f"{len(feature_sizes)} levels"
        )
    return [
        grid_anchors(fs, feature_strides(image_size, fs), cell_anchors(level_sizes, aspect_ratios))
        for fs, level_sizes in zip(feature_sizes, sizes)
    ]


def multilevel_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[Sequence[float]],
    aspect_ratios: Sequence[float],
) -> list[np.ndarray]:
    """Anchors for every level of a feature pyramid: a list of [H_l * W_l * A, 4] arrays."""
    if not (len(feature_sizes) == len(strides) == len(sizes)):
        raise ValueError(
            f"need one anchor size tuple per feature level: got {len(sizes)} size tuples for "
            f"{len(feature_sizes)} levels"
        )
    return [
        np.asarray(grid_anchors(fs, stride, cell_anchors(level_sizes, aspect_ratios)))
        for fs, stride, level_sizes in zip(feature_sizes, strides, sizes)
    ]
