"""The loss functions detector heads share, elementwise (each head sums and normalises).

Written with ``keras.ops`` to torchvision's definitions, so that a head's loss equals
torchvision's training-mode loss term on the same weights and targets:

* :func:`smooth_l1` -- ``0.5 x^2 / beta`` below ``beta``, ``|x| - 0.5 beta`` above;
* :func:`sigmoid_focal_loss` -- Lin et al. (2017): binary cross-entropy scaled by
  ``(1 - p_t)^gamma`` and weighted by ``alpha`` for positives, ``1 - alpha`` for negatives;
* :func:`giou_loss` -- ``1 - GIoU`` of two boxes (Rezatofighi et al., 2019), ``eps`` keeping
  degenerate boxes finite;
* :func:`normaliser` -- the count a summed loss is divided by, at least 1, averaged over the
  replicas of a ``tf.distribute`` strategy.
"""

from __future__ import annotations

from keras import ops

from kdetect.ops import tf_ops

#: Smooth L1's ``beta`` of both Faster R-CNN box losses (torchvision's 1 / 9).
SMOOTH_L1_BETA = 1.0 / 9.0


def smooth_l1(diff, beta: float):
    """Huber-like loss used for box regression: quadratic below ``beta``, linear above
    (``beta`` 0 is the L1 loss)."""
    diff = ops.abs(diff)
    if beta <= 0:
        return diff
    return ops.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
    """Elementwise focal loss of ``logits`` against 0/1 ``targets`` (same shape)."""
    logits = ops.cast(logits, "float32")
    targets = ops.cast(targets, "float32")
    p = ops.sigmoid(logits)
    ce = ops.binary_crossentropy(targets, logits, from_logits=True)
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss


def giou_loss(boxes1, boxes2, eps: float = 1e-7):
    """``1 - GIoU`` of matching ``xyxy`` boxes ``[..., 4]`` (elementwise over the rows)."""
    x1, y1, x2, y2 = ops.unstack(ops.cast(boxes1, "float32"), 4, axis=-1)
    u1, v1, u2, v2 = ops.unstack(ops.cast(boxes2, "float32"), 4, axis=-1)
    inter_w = ops.maximum(ops.minimum(x2, u2) - ops.maximum(x1, u1), 0.0)
    inter_h = ops.maximum(ops.minimum(y2, v2) - ops.maximum(y1, v1), 0.0)
    inter = inter_w * inter_h
    union = (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - inter
    iou = inter / (union + eps)
    hull = (ops.maximum(x2, u2) - ops.minimum(x1, u1)) * (ops.maximum(y2, v2) - ops.minimum(y1, v1))
    return 1.0 - iou + (hull - union) / (hull + eps)


def normaliser(weights):
    """The number of rows to divide a summed loss by, at least 1.

    Under a ``tf.distribute`` strategy each replica sees part of the batch; dividing by the
    replicas' mean count (and the loss by the replica count in ``train_step``) makes the summed
    gradients those of the global batch, even when images have different numbers of samples.
    """
    return ops.maximum(tf_ops.replica_mean(ops.stop_gradient(ops.sum(weights))), 1.0)
