"""The few TensorFlow-only operations the model needs, kept in one place.

Everything else in the model is written with ``keras.ops``. These are the exceptions, where
TensorFlow's fused kernels are much faster than a portable formulation: greedy non-maximum
suppression with a padded (static-size) output, and multi-class NMS for the final detections.
"""

from __future__ import annotations

import tensorflow as tf

from kdetect.boxes import xyxy_to_yxyx, yxyx_to_xyxy


def nms_padded(boxes, scores, max_output_size: int, iou_threshold: float, score_threshold=-1e8):
    """Greedy NMS per image of a batch with a fixed-size output.

    A box is suppressed by a higher-scoring kept box when their IoU is strictly greater than
    ``iou_threshold`` (torchvision's rule; TensorFlow's ``non_max_suppression_padded`` suppresses
    at ``>=`` and drops kept boxes whose coordinates are all <= 0, so the ``NonMaxSuppressionV4``
    kernel, which has neither quirk and an XLA lowering, is used instead).

    Args:
        boxes: float [B, N, 4] ``xyxy``.
        scores: float [B, N].
        max_output_size: number of indices returned per image.
        iou_threshold: boxes overlapping a kept box by more than this are suppressed.
        score_threshold: boxes scoring at or below this are never kept.

    Returns:
        ``(indices, num_valid)``: int32 [B, max_output_size] indices into N in descending score
        order (padding rows are 0), and int32 [B] the number of real entries per image.
    """
    boxes = tf.convert_to_tensor(boxes)
    scores = tf.cast(tf.convert_to_tensor(scores), tf.float32)
    yxyx = tf.cast(xyxy_to_yxyx(boxes), tf.float32)
    count = boxes.shape[1]
    if count is not None and count < max_output_size:
        # The kernel's XLA lowering needs at least max_output_size candidates: pad with boxes
        # that can never be selected (score -inf).
        yxyx = tf.pad(yxyx, [[0, 0], [0, max_output_size - count], [0, 0]])
        scores = tf.pad(
            scores, [[0, 0], [0, max_output_size - count]], constant_values=-float("inf")
        )

    def one_image(args):
        image_boxes, image_scores = args
        indices, num_valid = tf.raw_ops.NonMaxSuppressionV4(
            boxes=image_boxes,
            scores=image_scores,
            max_output_size=max_output_size,
            iou_threshold=float(iou_threshold),
            score_threshold=float(score_threshold),
            pad_to_max_output_size=True,
        )
        return tf.cast(indices, tf.int32), tf.cast(num_valid, tf.int32)

    return tf.map_fn(
        one_image,
        (yxyx, scores),
        fn_output_signature=(
            tf.TensorSpec([max_output_size], tf.int32),
            tf.TensorSpec([], tf.int32),
        ),
    )


def multiclass_nms(
    boxes, scores, max_output_size: int, iou_threshold: float, score_threshold: float
):
    """Per-class NMS, then the best ``max_output_size`` detections over all classes.

    Args:
        boxes: float [B, N, C, 4] ``xyxy``, one box per candidate and class.
        scores: float [B, N, C].

    Returns:
        ``(boxes [B, K, 4] xyxy, scores [B, K], classes int32 [B, K], num_valid int32 [B])``;
        rows past ``num_valid`` are zero.
    """
    out_boxes, out_scores, out_classes, num_valid = tf.image.combined_non_max_suppression(
        xyxy_to_yxyx(tf.cast(boxes, tf.float32)),
        tf.cast(scores, tf.float32),
        max_output_size_per_class=max_output_size,
        max_total_size=max_output_size,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        clip_boxes=False,
    )
    return yxyx_to_xyxy(out_boxes), out_scores, tf.cast(out_classes, tf.int32), num_valid
