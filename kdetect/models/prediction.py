"""Faster R-CNN on raw images: input checks, then the model's input transform and back.

``predict`` takes images of any size; the detector's :class:`~kdetect.models.transform.
ImageTransform` resizes and pads them (``fit`` into ``image_size``, ``min_max`` as torchvision)
and maps the boxes back to the input's pixels.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import numpy as np
from keras import ops

from kdetect import tf_ops
from kdetect.backbones import preprocess_images
from kdetect.boxes import clip_boxes
from kdetect.errors import InputShapeError

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

    def predict(self, x, *args, **kwargs):
        """``keras.Model.predict`` on raw images, validated first (see :func:`check_images`)."""
        return super().predict(check_images(x, "predict"), *args, **kwargs)

    def predict_on_batch(self, x):
        """``keras.Model.predict_on_batch``, validated first (see :func:`check_images`)."""
        return super().predict_on_batch(check_images(x, "predict_on_batch"))

    def predict_step(self, data):
        """Raw images -> :attr:`transform` -> detections, boxes back in the input's pixels.

        ``min_max`` normalises before resizing and pads the normalised images with zeros, as
        torchvision does, and clips proposals to the content; ``fit`` pads raw pixels with
        zeros, as the training pipeline does, and runs the frame as training does.
        """
        if isinstance(data, (tuple, list)):
            data = data[0]
        if isinstance(data, dict):
            data = data["images"]
        self._mark_xla_step(False)
        images = ops.cast(data, "float32")
        shape = ops.shape(images)
        min_max = self.transform.resize_mode == "min_max"
        if min_max:
            images = preprocess_images(images, self.backbone_name)
        frame, size = self.transform.resize(images, portable=self.portable_graph)
        detections = self.detect(frame, size) if min_max else self(frame, training=False)
        boxes = self.transform.unmap_boxes(detections["boxes"], shape[1:3], size)
        boxes = clip_boxes(boxes, shape[1], shape[2])
        valid = ops.expand_dims(detections["labels"] >= 0, -1)
        detections["boxes"] = ops.where(valid, boxes, 0.0)
        return detections
