"""Box math shared by both stages: format conversion, IoU, clipping and the delta coder.

All functions take ``keras.ops`` tensors (or NumPy arrays) with boxes in the last axis and work
with any number of leading batch axes. Boxes are ``xyxy`` in absolute pixels unless a name says
otherwise; widths are ``x2 - x1`` (the continuous-coordinate convention of torchvision and
Detectron2, not the +1 pixel convention of the VOC devkit, which only evaluation uses).
"""

from __future__ import annotations

import math

from keras import ops

#: Largest log-scale change of a box side a decoded delta may apply (torchvision's
#: ``bbox_xform_clip``): ``exp(log(1000 / 16))`` keeps a 16 px anchor below 1000 px.
DEFAULT_SCALE_CLIP = math.log(1000.0 / 16)


def xyxy_to_xywh(boxes):
    """``[x1, y1, x2, y2]`` -> ``[x1, y1, width, height]`` (COCO's format)."""
    x1, y1, x2, y2 = ops.unstack(boxes, 4, axis=-1)
    return ops.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def xywh_to_xyxy(boxes):
    """``[x1, y1, width, height]`` -> ``[x1, y1, x2, y2]``."""
    x1, y1, w, h = ops.unstack(boxes, 4, axis=-1)
    return ops.stack([x1, y1, x1 + w, y1 + h], axis=-1)


def xyxy_to_center(boxes):
    """``[x1, y1, x2, y2]`` -> ``[center_x, center_y, width, height]``."""
    x1, y1, x2, y2 = ops.unstack(boxes, 4, axis=-1)
    return ops.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], axis=-1)


def center_to_xyxy(boxes):
    """``[center_x, center_y, width, height]`` -> ``[x1, y1, x2, y2]``."""
    cx, cy, w, h = ops.unstack(boxes, 4, axis=-1)
    return ops.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def xyxy_to_yxyx(boxes):
    """Swap to TensorFlow's ``[y1, x1, y2, x2]`` order (its own inverse)."""
    x1, y1, x2, y2 = ops.unstack(boxes, 4, axis=-1)
    return ops.stack([y1, x1, y2, x2], axis=-1)


yxyx_to_xyxy = xyxy_to_yxyx


def box_area(boxes):
    """Area of ``xyxy`` boxes; degenerate boxes (x2 < x1) have area 0."""
    x1, y1, x2, y2 = ops.unstack(boxes, 4, axis=-1)
    return ops.maximum(x2 - x1, 0.0) * ops.maximum(y2 - y1, 0.0)


def pairwise_iou(boxes1, boxes2):
    """Intersection over union of every box in ``boxes1`` [..., N, 4] with every box in
    ``boxes2`` [..., M, 4]; returns [..., N, M]. Pairs whose union is empty get IoU 0."""
    boxes1 = ops.convert_to_tensor(boxes1)
    boxes2 = ops.convert_to_tensor(boxes2)
    a = ops.expand_dims(boxes1, -2)  # [..., N, 1, 4]
    b = ops.expand_dims(boxes2, -3)  # [..., 1, M, 4]
    ix1 = ops.maximum(a[..., 0], b[..., 0])
    iy1 = ops.maximum(a[..., 1], b[..., 1])
    ix2 = ops.minimum(a[..., 2], b[..., 2])
    iy2 = ops.minimum(a[..., 3], b[..., 3])
    intersection = ops.maximum(ix2 - ix1, 0.0) * ops.maximum(iy2 - iy1, 0.0)
    union = ops.expand_dims(box_area(boxes1), -1) + ops.expand_dims(box_area(boxes2), -2)
    union = union - intersection
    return ops.where(union > 0.0, intersection / ops.maximum(union, 1e-9), 0.0)


def clip_boxes(boxes, height, width):
    """Clip ``xyxy`` boxes to the image ``[0, width] x [0, height]``."""
    x1, y1, x2, y2 = ops.unstack(boxes, 4, axis=-1)
    height = ops.cast(height, boxes.dtype)
    width = ops.cast(width, boxes.dtype)
    return ops.stack(
        [
            ops.clip(x1, 0.0, width),
            ops.clip(y1, 0.0, height),
            ops.clip(x2, 0.0, width),
            ops.clip(y2, 0.0, height),
        ],
        axis=-1,
    )


class BoxCoder:
    """Encodes boxes as deltas relative to reference boxes (anchors or proposals) and back.

    With reference box ``(xa, ya, wa, ha)`` (centre and size) and target ``(x, y, w, h)``, the
    deltas are ``wx * (x - xa) / wa``, ``wy * (y - ya) / ha``, ``ww * log(w / wa)`` and
    ``wh * log(h / ha)``, as in the Faster R-CNN paper and torchvision. Decoding divides by the
    weights and clamps the log-size terms at ``scale_clip`` so a wild prediction cannot overflow.

    Args:
        weights: ``(wx, wy, ww, wh)``; (1, 1, 1, 1) for the RPN and (10, 10, 5, 5) for the R-CNN
            head by convention, which scales the targets to roughly unit variance.
        scale_clip: upper bound of ``dw / ww`` and ``dh / wh`` when decoding.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), scale_clip: float = DEFAULT_SCALE_CLIP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clip = float(scale_clip)

    def get_config(self) -> dict:
        """The constructor arguments, as plain values (layers keep them in their configs)."""
        return {"weights": self.weights, "scale_clip": self.scale_clip}

    @classmethod
    def from_value(cls, value, default_weights) -> BoxCoder:
        """A coder from a ``BoxCoder``, its ``get_config()`` dict, or None (``default_weights``)."""
        if value is None:
            return cls(default_weights)
        if isinstance(value, dict):
            return cls(**value)
        return value

    def encode(self, boxes, reference_boxes):
        """Deltas [..., 4] that move ``reference_boxes`` onto ``boxes`` (both ``xyxy``)."""
        wx, wy, ww, wh = self.weights
        cx, cy, w, h = ops.unstack(xyxy_to_center(boxes), 4, axis=-1)
        rcx, rcy, rw, rh = ops.unstack(xyxy_to_center(reference_boxes), 4, axis=-1)
        # Guard against degenerate boxes (padding rows); their targets are masked out anyway.
        rw = ops.maximum(rw, 1e-6)
        rh = ops.maximum(rh, 1e-6)
        w = ops.maximum(w, 1e-6)
        h = ops.maximum(h, 1e-6)
        return ops.stack(
            [
                wx * (cx - rcx) / rw,
                wy * (cy - rcy) / rh,
                ww * ops.log(w / rw),
                wh * ops.log(h / rh),
            ],
            axis=-1,
        )

    def decode(self, deltas, reference_boxes):
        """Apply ``deltas`` [..., 4] to ``reference_boxes`` [..., 4]; returns ``xyxy`` boxes."""
        wx, wy, ww, wh = self.weights
        deltas = ops.cast(deltas, reference_boxes.dtype)
        dx, dy, dw, dh = ops.unstack(deltas, 4, axis=-1)
        # Centres as x1 + w / 2 (not (x1 + x2) / 2): the same float32 rounding as torchvision.
        x1, y1, x2, y2 = ops.unstack(reference_boxes, 4, axis=-1)
        rw, rh = x2 - x1, y2 - y1
        rcx, rcy = x1 + 0.5 * rw, y1 + 0.5 * rh
        dw = ops.minimum(dw / ww, self.scale_clip)
        dh = ops.minimum(dh / wh, self.scale_clip)
        cx = dx / wx * rw + rcx
        cy = dy / wy * rh + rcy
        w = ops.exp(dw) * rw
        h = ops.exp(dh) * rh
        return center_to_xyxy(ops.stack([cx, cy, w, h], axis=-1))
