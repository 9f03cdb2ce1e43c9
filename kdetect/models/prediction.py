"""The checks of raw images given to a detector's ``predict``
(:class:`~kdetect.models.base.DetectionModel`), before they reach a traced function."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

from kdetect.ops import tf_ops
from kdetect.plumbing.errors import InputShapeError

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside kdetect: warnings point at user code."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def check_images(images, where: str = "predict"):
    """Validate a batch of raw images given to ``predict`` before it reaches a traced function.

    ``images`` (an array, a tensor or ``{"images": array}``) must be ``[B, H, W, 3]`` with
    ``B, H, W >= 1``; otherwise :class:`~kdetect.plumbing.errors.InputShapeError` (a ``ValueError``)
    names the expected and the received shape. A float batch whose largest value is at most 1.0
    gets one warning (pixels are expected in 0..255), pointing at the caller's line. Datasets,
    generators and symbolic tensors pass through unchanged. Returns ``images``.
    """
    data = images["images"] if isinstance(images, dict) and "images" in images else images
    if tf_ops.is_graph_tensor(data):
        return images
    if not (isinstance(data, (np.ndarray, list)) or tf_ops.is_tensor(data)):
        return images  # tf.data.Dataset, generators, PyDataset: checked by their own shapes
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise InputShapeError(
            f"{where}: expected images as one [B, H, W, 3] array; got a ragged list "
            "(give same-size images, or one call per size)"
        ) from None
    shape = tuple(array.shape)
    expected = "[batch, height, width, 3] images (uint8 or float pixels 0..255)"
    if array.ndim == 3 and shape[-1] in (1, 3, 4):
        hint = f"; add a batch axis (images[None]) for one {shape[0]}x{shape[1]} image"
        raise InputShapeError(f"{where}: expected {expected}, got shape {shape}{hint}")
    if array.ndim != 4:
        raise InputShapeError(f"{where}: expected {expected}, got shape {shape}")
    if shape[-1] != 3:
        hint = {1: " (grayscale: repeat it to 3 channels)", 4: " (RGBA: drop the alpha channel)"}
        raise InputShapeError(
            f"{where}: expected {expected}, got shape {shape}: {shape[-1]} channel(s)"
            f"{hint.get(shape[-1], '')}"
        )
    if 0 in shape[:3]:
        what = "an empty batch" if shape[0] == 0 else "a zero-size image"
        raise InputShapeError(f"{where}: expected {expected}, got shape {shape} ({what})")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputShapeError(f"{where}: expected numeric pixels, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and float(np.max(array)) <= 1.0:
        warnings.warn(
            f"{where}: float images with values at most 1.0; the detector expects pixels in "
            "0..255 (scale by 255), so it will likely find nothing",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )
    return images
