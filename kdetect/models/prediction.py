"""Faster R-CNN on raw images: input checks, resizing into the network's frame and back.

``predict`` takes images of any size; the ``fit`` transform scales them into ``image_size``
and pads, the ``min_max`` transform is torchvision's (short side to ``min_size`` unless the
long side would pass ``max_size``, padded to 32); boxes are mapped back to the input's pixels.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import numpy as np
import tensorflow as tf  # the resize below; kdetect.tf_ops holds the model's other TF calls
from keras import ops

from kdetect import tf_ops
from kdetect.backbones import preprocess_images
from kdetect.boxes import clip_boxes
from kdetect.errors import InputShapeError

# Sides up to this many pixels get float64's exact ``min_max`` rounding in exported graphs.
_MIN_MAX_TABLE_SIZE = 16384

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
    ``B, H, W >= 1``; otherwise :class:`~kdetect.errors.InputShapeError` (a ``ValueError``)
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


class RawImagePrediction:
    """The prediction half of :class:`~kdetect.models.faster_rcnn.FasterRCNN` (a mixin of it)."""

    @contextlib.contextmanager
    def portable_ops(self):
        """Graphs traced inside this block use only ops that the TFLite and ONNX converters
        turn into builtins (RoIAlign by gathers instead of ``crop_and_resize``); same values."""
        previous = self.portable_graph
        self.portable_graph = True
        try:
            yield self
        finally:
            self.portable_graph = previous

    def make_predict_function(self, force=False):
        """The predict function is never XLA-compiled, even after ``compile(jit_compile=True)``.

        The final per-class NMS and RoIAlign's ``crop_and_resize`` have no XLA kernels; the
        backbone still runs TensorFlow's own fused kernels.
        """
        jit = self._jit_compile
        self._jit_compile = False
        try:
            return super().make_predict_function(force=force)
        finally:
            self._jit_compile = jit

    # --- Inference on raw images ------------------------------------------------------------
    def resize_and_pad(self, images):
        """Resize same-size images to fit ``image_size`` and pad; returns (images, scale)."""
        images = ops.cast(images, "float32")
        target_h, target_w = self.image_size
        shape = ops.shape(images)
        h = ops.cast(shape[1], "float32")
        w = ops.cast(shape[2], "float32")
        scale = ops.minimum(target_h / h, target_w / w)
        new_h = ops.minimum(ops.cast(ops.round(h * scale), "int32"), target_h)
        new_w = ops.minimum(ops.cast(ops.round(w * scale), "int32"), target_w)
        resized = tf.image.resize(images, ops.stack([new_h, new_w]), method="bilinear")
        padded = tf.image.pad_to_bounding_box(resized, 0, 0, target_h, target_w)
        return ops.reshape(padded, (-1, target_h, target_w, 3)), scale

    def min_max_size(self, height, width):
        """torchvision's resized size: the short side to ``min_size`` unless the long side would
        pass ``max_size``. As torchvision computes it in eager mode, the scale is a float64
        quotient and each side is ``floor(side * scale)`` in float64, so rounding can land one
        pixel short (194 px at scale 800 / 194 becomes 799)."""
        h = ops.cast(height, "float64")
        w = ops.cast(width, "float64")
        scale = ops.minimum(
            float(self.min_size) / ops.minimum(h, w), float(self.max_size) / ops.maximum(h, w)
        )
        return ops.cast(ops.floor(h * scale), "int32"), ops.cast(ops.floor(w * scale), "int32")

    def min_max_size_int32(self, height, width):
        """:meth:`min_max_size` without float64, for exported graphs (TFLite has no float64
        kernels).

        Which limit decides is an exact integer comparison (``min_size * long <= max_size *
        short``). The deciding side ``d`` becomes ``floor(d * (n / d))`` in float64, ``n`` or
        ``n - 1``: read from a table computed here in float64 for ``d`` below 16384 (the
        limit itself above). The other side ``v`` is ``floor(v * n / d)`` in integers, which is
        float64's answer unless ``v * n / d`` is itself an integer that float64 lands just below
        (15 of 200,000 random size pairs up to 5000 px).
        """
        h = ops.cast(height, "int32")
        w = ops.cast(width, "int32")
        short, long = ops.minimum(h, w), ops.maximum(h, w)
        by_min = self.min_size * long <= self.max_size * short
        side = ops.where(by_min, short, long)
        limit = ops.where(by_min, self.min_size, self.max_size)
        sides = np.arange(_MIN_MAX_TABLE_SIZE, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            tables = [
                np.nan_to_num(np.floor(sides * (n / sides))) for n in (self.min_size, self.max_size)
            ]
        index = ops.minimum(side, _MIN_MAX_TABLE_SIZE - 1)
        looked_up = ops.where(
            by_min,
            ops.take(tables[0].astype("int32"), index),
            ops.take(tables[1].astype("int32"), index),
        )
        deciding = ops.where(side < _MIN_MAX_TABLE_SIZE, looked_up, limit)

        def resized(v):
            return ops.where(v == side, deciding, (v * limit) // side)

        return resized(h), resized(w)

    def _predict_min_max(self, images):
        """``min_max`` transform: normalise, resize, pad to 32 with zeros, detect, map back."""
        shape = ops.shape(images)
        inputs = preprocess_images(images, self.backbone_name)
        if self.portable_graph:
            new_h, new_w = self.min_max_size_int32(shape[1], shape[2])
        else:
            new_h, new_w = self.min_max_size(shape[1], shape[2])
        inputs = tf.image.resize(inputs, ops.stack([new_h, new_w]), method="bilinear")
        frame_h = (new_h + 31) // 32 * 32
        frame_w = (new_w + 31) // 32 * 32
        inputs = tf.pad(inputs, [[0, 0], [0, frame_h - new_h], [0, frame_w - new_w], [0, 0]])
        # Padding by computed amounts hides the channel count from the TFLite converter.
        batch = images.shape[0] if images.shape[0] is not None else -1
        inputs = ops.reshape(inputs, (batch, frame_h, frame_w, 3))
        detections = self.detect(inputs, (new_h, new_w))
        ratio_h = ops.cast(shape[1], "float32") / ops.cast(new_h, "float32")
        ratio_w = ops.cast(shape[2], "float32") / ops.cast(new_w, "float32")
        ratios = ops.stack([ratio_w, ratio_h, ratio_w, ratio_h])
        return detections, detections["boxes"] * ratios

    def predict(self, x, *args, **kwargs):
        """``keras.Model.predict`` on raw images, validated first (see :func:`check_images`)."""
        return super().predict(check_images(x, "predict"), *args, **kwargs)

    def predict_on_batch(self, x):
        """``keras.Model.predict_on_batch``, validated first (see :func:`check_images`)."""
        return super().predict_on_batch(check_images(x, "predict_on_batch"))

    def predict_step(self, data):
        if isinstance(data, (tuple, list)):
            data = data[0]
        if isinstance(data, dict):
            data = data["images"]
        self._mark_xla_step(False)
        shape = ops.shape(data)
        if self.resize_mode == "min_max":
            detections, boxes = self._predict_min_max(ops.cast(data, "float32"))
        else:
            images, scale = self.resize_and_pad(data)
            detections = self(images, training=False)
            boxes = detections["boxes"] / scale
        boxes = clip_boxes(boxes, shape[1], shape[2])
        valid = ops.expand_dims(detections["labels"] >= 0, -1)
        detections["boxes"] = ops.where(valid, boxes, 0.0)
        return detections
