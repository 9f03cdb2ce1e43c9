"""The detector's input transform: one resize rule for training, evaluation, predict and export.

As torchvision's ``GeneralizedRCNNTransform``, the model owns how an image reaches the network.
An :class:`ImageTransform` is built from the model's settings and holds the one scale rule:

* ``fit``: the scale is ``min(H / h, W / w)`` into the frame ``image_size`` = ``(H, W)``
  (float32), each side ``round(side * scale)``;
* ``min_max``: torchvision's, the short side to ``min_size`` unless the long side would pass
  ``max_size``: ``min(min_size / short, max_size / long)`` in float64, each side
  ``floor(side * scale)`` (so 194 px at scale 800 / 194 becomes 799, as in torchvision);
* ``fixed``: every image is stretched to ``image_size`` itself, each axis by its own factor
  (the aspect ratio is not kept; torchvision's SSD transform), and never padded.

Prediction resizes each image by the rule and pads it (bottom and right, with zeros) to the
frame (``fit``) or to a multiple of ``size_divisible`` (``min_max``). Training batches share one
static frame, ``image_size``: the data pipeline resizes by the same rule (times its random
scale jitter) and where a ``min_max`` size would not fit the frame it uses the ``fit`` rule.
Boxes follow the resize by its exact per-axis factors ``new / old``, both ways.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf  # the resize; kdetect.ops.tf_ops holds the model's other TF calls
from keras import ops

from kdetect.models import RESIZE_MODES

# Sides up to this many pixels get float64's exact ``min_max`` rounding in portable graphs.
MIN_MAX_TABLE_SIZE = 16384


def checked_image_size(image_size, multiple: int = 32) -> tuple[int, int]:
    """``image_size`` as ``(height, width)`` ints, both positive multiples of ``multiple``."""
    if (
        isinstance(image_size, (str, bytes))
        or not isinstance(image_size, Sequence | np.ndarray)
        or len(image_size) != 2
        or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in image_size)
    ):
        raise TypeError(f"image_size must be (height, width), two integers; got {image_size!r}")
    image_size = tuple(int(s) for s in image_size)
    if any(s <= 0 for s in image_size):
        raise ValueError(f"image_size must be (height, width), both positive; got {image_size}")
    if any(s % multiple for s in image_size):
        raise ValueError(
            f"image_size must be (height, width), multiples of {multiple}; got {image_size}"
        )
    return image_size


@keras.saving.register_keras_serializable(package="kdetect")
class ImageTransform:
    """Resize rule, padding and box mapping of a detector's input (see the module docstring).

    Args:
        image_size: ``(height, width)`` of the training frame (and of ``fit``'s prediction
            frame), multiples of ``size_divisible``.
        resize_mode: ``fit``, ``min_max`` or ``fixed``.
        min_size, max_size: the sizes of ``min_max``.
        size_divisible: the frame's sides are multiples of this (the backbone's largest
            stride); default 32, and 1 for ``fixed`` (SSD's 300 x 300).
    """

    def __init__(
        self,
        image_size: Sequence[int] = (800, 800),
        resize_mode: str = "fit",
        min_size: int = 800,
        max_size: int = 1333,
        size_divisible: int | None = None,
    ):
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size} and {max_size}")
        if size_divisible is None:
            size_divisible = 1 if resize_mode == "fixed" else 32
        if isinstance(size_divisible, bool) or int(size_divisible) < 1:
            raise ValueError(f"size_divisible must be a positive integer, got {size_divisible}")
        self.size_divisible = int(size_divisible)
        self.image_size = checked_image_size(image_size, self.size_divisible)
        self.resize_mode, self.min_size, self.max_size = resize_mode, int(min_size), int(max_size)

    def get_config(self) -> dict:
        return {
            "image_size": self.image_size,
            "resize_mode": self.resize_mode,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "size_divisible": self.size_divisible,
        }

    @classmethod
    def from_config(cls, config: dict) -> ImageTransform:
        return cls(**config)

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"ImageTransform({settings})"

    def predicting_at(self, size: Sequence[int]) -> ImageTransform:
        """This transform with predictions made at ``size`` = ``(H, W)`` (predict's
        ``--image-size``), training settings otherwise unchanged. ``fit`` and ``fixed``: the
        frame becomes ``size`` (multiples of ``size_divisible``). ``min_max``: the short side
        goes to ``min(size)`` and the long side at most to ``max(size)``; a square ``(N, N)``
        keeps the model's ratio of the two (torchvision's ``min_size`` = N, ``max_size`` =
        N * max_size / min_size)."""
        height, width = (int(v) for v in size)
        config = self.get_config()
        if self.resize_mode != "min_max":
            config["image_size"] = (height, width)
        elif height == width:
            config["min_size"] = height
            config["max_size"] = max(height, round(height * self.max_size / self.min_size))
        else:
            config["min_size"], config["max_size"] = min(height, width), max(height, width)
        return ImageTransform(**config)

    # --- The scale rule -------------------------------------------------------------------
    def scale(self, height, width):
        """The rule's scale for a ``height`` x ``width`` image: float32 for ``fit``, float64
        (torchvision's eager arithmetic) for ``min_max``. ``fixed`` has one factor per axis; its
        ``scale`` is ``fit``'s (the smaller factor)."""
        if self.resize_mode == "min_max":
            h, w = ops.cast(height, "float64"), ops.cast(width, "float64")
            return ops.minimum(
                float(self.min_size) / ops.minimum(h, w), float(self.max_size) / ops.maximum(h, w)
            )
        return self._fit_scale(height, width)

    def _fit_scale(self, height, width):
        h, w = ops.cast(height, "float32"), ops.cast(width, "float32")
        return ops.minimum(self.image_size[0] / h, self.image_size[1] / w)

    @staticmethod
    def _sides(height, width, scale, dtype, rounding):
        """``rounding(side * scale)`` of both sides in ``dtype``, as int32, at least 1 px."""
        sides = [rounding(ops.cast(side, dtype) * scale) for side in (height, width)]
        return tuple(ops.maximum(ops.cast(side, "int32"), 1) for side in sides)

    def resized_size(self, height, width, factor=1.0, portable: bool = False):
        """``(new_height, new_width)`` int32 of a ``height`` x ``width`` image: the rule's scale
        times ``factor`` (the pipeline's jitter), rounded as the rule rounds. ``portable``
        (``min_max`` only, ``factor`` 1) computes the same without float64 (TFLite has none).
        ``fixed``: ``image_size`` times ``factor``, whatever the image's size."""
        if self.resize_mode == "fixed":
            factor = ops.cast(factor, "float32")
            return tuple(
                ops.maximum(ops.cast(ops.round(float(side) * factor), "int32"), 1)
                for side in self.image_size
            )
        if self.resize_mode == "fit":
            scale = self._fit_scale(height, width) * ops.cast(factor, "float32")
            return self._sides(height, width, scale, "float32", ops.round)
        if portable:
            return self._min_max_size_int32(height, width)
        scale = self.scale(height, width) * ops.cast(factor, "float64")
        return self._sides(height, width, scale, "float64", ops.floor)

    def training_size(self, height, width, factor=1.0):
        """``((new_height, new_width), scale)`` of an image in a training (or evaluation) batch,
        whose frame is ``image_size``: :meth:`resized_size`, except that a ``min_max`` size that
        would not fit the frame (at ``factor`` 1) takes the ``fit`` rule instead. ``scale`` is
        the rule's (float32), before ``factor``."""
        if self.resize_mode in ("fit", "fixed"):
            return self.resized_size(height, width, factor), self._fit_scale(height, width)
        fit = ImageTransform(self.image_size, "fit", size_divisible=1)
        full_h, full_w = self.resized_size(height, width)
        fits = (full_h <= self.image_size[0]) & (full_w <= self.image_size[1])
        own = self.resized_size(height, width, factor)
        fitted = fit.resized_size(height, width, factor)
        size = tuple(ops.where(fits, a, b) for a, b in zip(own, fitted, strict=True))
        own_scale = ops.cast(self.scale(height, width), "float32")
        return size, ops.where(fits, own_scale, fit.scale(height, width))

    def _min_max_size_int32(self, height, width):
        """The ``min_max`` size without float64.

        Which limit decides is an exact integer comparison (``min_size * long <= max_size *
        short``). The deciding side ``d`` becomes ``floor(d * (n / d))`` in float64, ``n`` or
        ``n - 1``: read from a table computed here in float64 for ``d`` below
        :data:`MIN_MAX_TABLE_SIZE` (the limit itself above). The other side ``v`` is
        ``floor(v * n / d)`` in integers, which is float64's answer unless ``v * n / d`` is
        itself an integer that float64 lands just below (15 of 200,000 random size pairs up to
        5000 px). Both sides are at least 1 px, as in :meth:`resized_size`.
        """
        h, w = ops.cast(height, "int32"), ops.cast(width, "int32")
        short, long = ops.minimum(h, w), ops.maximum(h, w)
        by_min = self.min_size * long <= self.max_size * short
        side = ops.where(by_min, short, long)
        limit = ops.where(by_min, self.min_size, self.max_size)
        sides = np.arange(MIN_MAX_TABLE_SIZE, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            tables = [
                np.nan_to_num(np.floor(sides * (n / sides))) for n in (self.min_size, self.max_size)
            ]
        index = ops.minimum(side, MIN_MAX_TABLE_SIZE - 1)
        looked_up = ops.where(
            by_min,
            ops.take(tables[0].astype("int32"), index),
            ops.take(tables[1].astype("int32"), index),
        )
        deciding = ops.where(side < MIN_MAX_TABLE_SIZE, looked_up, limit)

        def resized(v):
            return ops.maximum(ops.where(v == side, deciding, (v * limit) // side), 1)

        return resized(h), resized(w)

    # --- Images and boxes -----------------------------------------------------------------
    def frame_size(self, new_height, new_width):
        """The padded frame of a prediction: ``image_size`` (``fit``), or the resized size
        rounded up to multiples of ``size_divisible`` (``min_max``); ``image_size`` itself,
        unpadded (``fixed``)."""
        if self.resize_mode in ("fit", "fixed"):
            return self.image_size
        step = self.size_divisible
        return (new_height + step - 1) // step * step, (new_width + step - 1) // step * step

    def resize(self, images, portable: bool = False):
        """Same-size float images ``[B, h, w, 3]`` -> ``(frame [B, H, W, 3], (new_h, new_w))``:
        resized (bilinear) by the rule and zero-padded at the bottom and right to
        :meth:`frame_size`. The content fills the top-left ``new_h`` x ``new_w``."""
        shape = ops.shape(images)
        new_h, new_w = self.resized_size(shape[1], shape[2], portable=portable)
        frame_h, frame_w = self.frame_size(new_h, new_w)
        resized = tf.image.resize(images, ops.stack([new_h, new_w]), method="bilinear")
        padded = tf.pad(resized, [[0, 0], [0, frame_h - new_h], [0, frame_w - new_w], [0, 0]])
        # Padding by computed amounts hides the channel count from the TFLite converter.
        batch = images.shape[0] if images.shape[0] is not None else -1
        return ops.reshape(padded, (batch, frame_h, frame_w, 3)), (new_h, new_w)

    def pad_like_prediction(self, inputs, image_sizes):
        """Normalised training frames ``inputs`` [B, H, W, 3] whose images fill the top-left
        ``image_sizes`` [B, 2] (height, width) -> padded as :meth:`resize` pads a prediction:
        ``fit`` pads raw pixels (unchanged here), the other rules pad normalised images with
        zeros (torchvision's), so the padding is zeroed."""
        if self.resize_mode == "fit":
            return inputs
        sizes = ops.cast(image_sizes, "int32")
        rows = ops.arange(ops.shape(inputs)[1])[None, :] < sizes[:, 0:1]  # [B, H]
        cols = ops.arange(ops.shape(inputs)[2])[None, :] < sizes[:, 1:2]  # [B, W]
        inside = ops.expand_dims(rows, 2) & ops.expand_dims(cols, 1)  # [B, H, W]
        return ops.where(ops.expand_dims(inside, -1), inputs, ops.zeros_like(inputs))

    @staticmethod
    def _ratios(to_size, from_size):
        """``[x, y, x, y]`` factors taking pixels of a ``from_size`` image to ``to_size``."""
        ratio_h = ops.cast(to_size[0], "float32") / ops.cast(from_size[0], "float32")
        ratio_w = ops.cast(to_size[1], "float32") / ops.cast(from_size[1], "float32")
        return ops.stack([ratio_w, ratio_h, ratio_w, ratio_h])

    def map_boxes(self, boxes, original_size, resized_size):
        """``xyxy`` boxes in pixels of the original ``(h, w)`` image -> pixels of the frame
        whose top-left ``resized_size`` holds it (each axis by its own factor ``new / old``)."""
        return ops.cast(boxes, "float32") * self._ratios(resized_size, original_size)

    def unmap_boxes(self, boxes, original_size, resized_size):
        """The inverse of :meth:`map_boxes`: frame pixels back to the original image's."""
        return ops.cast(boxes, "float32") * self._ratios(original_size, resized_size)
