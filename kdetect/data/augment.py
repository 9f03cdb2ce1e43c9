"""Box-aware image transforms for the tf.data pipeline, on one (unbatched) example.

Every function takes an image ``[h, w, 3]`` (uint8 or float) and boxes ``[M, 4]`` ``xyxy`` in
absolute pixels of that image, and returns both transformed together. Randomness is stateless:
each call gets a ``seed`` tensor of shape ``[2]``, so a pipeline built with a fixed seed is
reproducible even under parallel ``map``.

The resize is the model's own rule (:class:`~kdetect.models.transform.ImageTransform`, the
one predict and export use); the random scale jitter multiplies that rule's scale.

Why not Keras' bbox-aware layers: the pipeline resizes each image by its own random scale,
crops and pads it to a static size in one step (one resize per image instead of three), keeps
the difficult flags and the padding convention in step with the boxes, and runs inside
``tf.data`` with stateless seeds. Written as four small functions this stays easy to test
against a drawn rectangle (``tests/data/test_data_pipeline.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from kdetect.models.transform import ImageTransform

DEFAULT_AUGMENT: dict[str, Any] = {
    # probability of a horizontal flip
    "horizontal_flip": 0.5,
    # the model's resize scale is multiplied by a factor drawn from this range; above 1 a
    # random window of the frame's size is cropped (boxes clipped to it), below 1 there is
    # more padding
    "scale_range": (0.8, 1.25),
    # colour jitter, 0 = off: brightness delta (fraction of 255), contrast/saturation factor
    # range 1 +- value, hue delta (fraction of a turn, at most 0.5)
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "hue": 0.0,
    # boxes narrower or lower than this (pixels of the image as fed) after cropping are dropped
    "min_box_size": 1.0,
}


def augment_config(augment: Mapping[str, Any] | bool | None) -> dict[str, Any] | None:
    """Resolve the ``augment`` argument of ``make_dataset`` into a full option dict (or None).

    ``None`` or ``True`` gives :data:`DEFAULT_AUGMENT`; ``False`` turns augmentation off; a
    mapping overrides some defaults. An unknown key raises ``ValueError`` naming it.
    """
    if augment is False:
        return None
    config = dict(DEFAULT_AUGMENT)
    if augment is None or augment is True:
        return config
    unknown = sorted(set(augment) - set(DEFAULT_AUGMENT))
    if unknown:
        raise ValueError(
            f"unknown augmentation option(s) {', '.join(unknown)}; expected "
            f"{', '.join(DEFAULT_AUGMENT)}"
        )
    config.update(augment)
    low, high = (float(v) for v in config["scale_range"])
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {config['scale_range']}")
    config["scale_range"] = (low, high)
    return config


def horizontal_flip(
    image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor, probability: float = 0.5
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror the image left-right with the given probability; boxes follow."""
    width = tf.cast(tf.shape(image)[1], boxes.dtype)
    do_flip = tf.random.stateless_uniform([], seed) < probability

    def flip():
        x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
        return tf.reverse(image, axis=[1]), tf.stack([width - x2, y1, width - x1, y2], axis=-1)

    return tf.cond(do_flip, flip, lambda: (image, boxes))


def resize_crop(
    image: tf.Tensor,
    boxes: tf.Tensor,
    transform: ImageTransform,
    scale_factor: tf.Tensor | float = 1.0,
    crop_seed: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Resize by the model's rule (``transform``, see :meth:`ImageTransform.training_size`)
    with its scale times ``scale_factor``, then crop to at most the frame
    ``transform.image_size``.

    When the result is larger than the frame, a window is cut at a random offset (``crop_seed``)
    or at the top-left (``crop_seed=None``), and boxes are clipped to it.

    Returns ``(image float32 [<=H, <=W, 3], boxes [M, 4], scale)`` where ``scale`` (the rule's
    scale times the factor) maps original pixels to fed pixels.
    """
    target_h, target_w = transform.image_size
    shape = tf.shape(image)
    (new_h, new_w), scale = transform.training_size(shape[0], shape[1], scale_factor)
    # Boxes use the exact per-axis factors of the resize, so they stay on the same pixels.
    boxes = transform.map_boxes(boxes, shape[:2], (new_h, new_w))

    crop_h = tf.minimum(new_h, target_h)
    crop_w = tf.minimum(new_w, target_w)
    if crop_seed is None:
        off_y = tf.constant(0, tf.int32)
        off_x = tf.constant(0, tf.int32)
    else:
        seeds = tf.random.experimental.stateless_split(crop_seed, 2)
        off_y = tf.random.stateless_uniform(
            [], seeds[0], minval=0, maxval=new_h - crop_h + 1, dtype=tf.int32
        )
        off_x = tf.random.stateless_uniform(
            [], seeds[1], minval=0, maxval=new_w - crop_w + 1, dtype=tf.int32
        )
    resized = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear")
    resized = resized[off_y : off_y + crop_h, off_x : off_x + crop_w, :]
    offset = tf.cast(tf.stack([off_x, off_y, off_x, off_y]), tf.float32)
    limit = tf.cast(tf.stack([crop_w, crop_h, crop_w, crop_h]), tf.float32)
    boxes = tf.clip_by_value(boxes - offset, 0.0, limit)
    return resized, boxes, scale * tf.cast(scale_factor, tf.float32)


def pad_image(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Place an image no larger than ``image_size`` at the top-left of a zero canvas."""
    padded = tf.image.pad_to_bounding_box(image, 0, 0, int(image_size[0]), int(image_size[1]))
    padded.set_shape([int(image_size[0]), int(image_size[1]), 3])
    return padded


def resize_crop_pad(
    image: tf.Tensor,
    boxes: tf.Tensor,
    transform: ImageTransform,
    scale_factor: tf.Tensor | float = 1.0,
    crop_seed: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """:func:`resize_crop` then :func:`pad_image`: a float32 image of exactly the frame."""
    resized, boxes, scale = resize_crop(image, boxes, transform, scale_factor, crop_seed)
    return pad_image(resized, transform.image_size), boxes, scale


# ITU-R BT.601 luma weights and the RGB <-> YIQ matrices used for the hue rotation.
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def color_jitter(
    image: tf.Tensor,
    seed: tf.Tensor,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue on a float image in 0..255.

    Brightness adds ``U(-b, b) * 255``; contrast scales around the mean grey level by
    ``U(1 - c, 1 + c)``; saturation blends with the grey image by ``U(1 - s, 1 + s)`` (as
    torchvision's ``ColorJitter``); hue rotates the chroma plane of YIQ by ``U(-h, h)`` turns.
    All four are affine in RGB, so they are folded into one 3x3 matrix and an offset: the jitter
    costs a mean and one matrix product instead of an RGB -> HSV round trip per step. (No
    clipping between the steps, only at the end.)
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = tf.cast(image, tf.float32)
    if not (brightness or contrast or saturation or hue):
        return tf.clip_by_value(image, 0.0, 255.0)
    luma = tf.constant(_LUMA, tf.float32)
    # brightness then contrast: c * (x + d - m') + m' with m' = m + d the new mean grey,
    # i.e. c * x + (d + (1 - c) * m): one scale and one offset for every channel.
    delta = (
        tf.random.stateless_uniform([], seeds[0], -brightness, brightness) * 255.0
        if brightness
        else tf.constant(0.0)
    )
    if contrast:
        factor = tf.random.stateless_uniform([], seeds[1], 1.0 - contrast, 1.0 + contrast)
        mean = tf.tensordot(tf.reduce_mean(image, axis=[0, 1]), luma, axes=1)
        offset = delta + (1.0 - factor) * mean
    else:
        factor, offset = tf.constant(1.0), delta
    # saturation and hue: a 3x3 matrix acting on row vectors of RGB
    matrix = tf.eye(3)
    if saturation:
        s = tf.random.stateless_uniform([], seeds[2], 1.0 - saturation, 1.0 + saturation)
        # s * rgb + (1 - s) * grey
        matrix = s * tf.eye(3) + (1.0 - s) * tf.tile(luma[:, None], [1, 3])
    if hue:
        theta = tf.random.stateless_uniform([], seeds[3], -hue, hue) * 2.0 * 3.141592653589793
        cos, sin = tf.cos(theta), tf.sin(theta)
        to_yiq = tf.constant(_RGB_TO_YIQ, tf.float32)
        rotate = tf.stack([[1.0, 0.0, 0.0], tf.stack([0.0, cos, -sin]), tf.stack([0.0, sin, cos])])
        hue_matrix = tf.linalg.inv(to_yiq) @ rotate @ to_yiq  # acts on column vectors
        matrix = matrix @ tf.transpose(hue_matrix)
    if not (saturation or hue):
        return tf.clip_by_value(image * factor + offset, 0.0, 255.0)
    bias = offset * tf.reduce_sum(matrix, axis=0)  # the offset, passed through the matrix
    shape = tf.shape(image)
    out = tf.reshape(tf.reshape(image, [-1, 3]) @ (factor * matrix), shape) + bias
    return tf.clip_by_value(out, 0.0, 255.0)


def keep_boxes(boxes: tf.Tensor, min_size: float = 0.0) -> tf.Tensor:
    """Boolean mask of boxes whose width and height are both above ``min_size``
    (at least some area when ``min_size`` is 0)."""
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    if min_size > 0:
        return (width >= min_size) & (height >= min_size)
    return (width > 0) & (height > 0)


def pad_boxes(
    boxes: tf.Tensor, labels: tf.Tensor, max_boxes: int, *extra: tf.Tensor
) -> tuple[tf.Tensor, ...]:
    """Cut to ``max_boxes`` rows and pad: boxes with zeros, labels with -1, extras with zeros."""
    n = tf.minimum(tf.shape(boxes)[0], max_boxes)
    pad = max_boxes - n
    out_boxes = tf.pad(tf.cast(boxes[:n], tf.float32), [[0, pad], [0, 0]])
    out_labels = tf.pad(tf.cast(labels[:n], tf.int32), [[0, pad]], constant_values=-1)
    out_boxes.set_shape([max_boxes, 4])
    out_labels.set_shape([max_boxes])
    outs = [out_boxes, out_labels]
    for tensor in extra:
        padded = tf.pad(tensor[:n], [[0, pad]])
        padded.set_shape([max_boxes])
        outs.append(padded)
    return tuple(outs)
