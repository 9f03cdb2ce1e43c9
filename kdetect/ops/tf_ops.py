"""The TensorFlow-only operations the model and its layers need, kept in one place.

Everything else in the model is written with ``keras.ops``. These are the exceptions: greedy
non-maximum suppression with a padded (static-size) output (the RPN's per-level NMS and the
final per-class NMS), RoIAlign by ``crop_and_resize`` and training-mode batch norm, where
TensorFlow's fused kernels are much faster than a portable formulation; and the training step's
gradient tape and ``tf.distribute`` queries (replica count, cross-replica means), which Keras
leaves to each backend. (The resize of ``FasterRCNN.predict_step`` still calls ``tf.image``
itself.) So the model needs the TensorFlow backend.

Both are built from the single-image ``NonMaxSuppressionV4`` kernel, which every converter
knows (TFLite's builtin ``NON_MAX_SUPPRESSION_V4``, ONNX's ``NonMaxSuppression``). A batch whose
size is known when the graph is traced (exported files take one image) runs one call per image
and group, unrolled; an unknown batch runs them in a ``tf.map_fn`` loop.
"""

from __future__ import annotations

import contextlib
import math

import tensorflow as tf

# TensorFlow has no public switch back from enable_op_determinism(); ``cpu_determinism`` needs
# one so that determinism ends with the training run that asked for it.
from tensorflow.python.framework import config as tf_config

from kdetect.ops.boxes import xyxy_to_yxyx


def _per_row(fn, inputs, output_signature):
    """``fn`` applied to each row of the equally long ``inputs``: a Python loop when the number
    of rows is static (no loop op in the graph), else ``tf.map_fn``."""
    rows = inputs[0].shape[0]
    if rows is None:
        return tf.map_fn(fn, inputs, fn_output_signature=output_signature)
    results = [fn(tuple(x[i] for x in inputs)) for i in range(rows)]
    return tuple(tf.stack(parts) for parts in zip(*results, strict=True))


def nms_padded(boxes, scores, max_output_size: int, iou_threshold: float, score_threshold=-1e8):
    """Greedy NMS per row of a batch with a fixed-size output.

    A box is suppressed by a higher-scoring kept box when their IoU is strictly greater than
    ``iou_threshold`` (torchvision's rule; TensorFlow's ``non_max_suppression_padded`` suppresses
    at ``>=`` and drops kept boxes whose coordinates are all <= 0, so the ``NonMaxSuppressionV4``
    kernel, which has neither quirk and an XLA lowering, is used instead).

    Args:
        boxes: float [B, N, 4] ``xyxy``.
        scores: float [B, N].
        max_output_size: number of indices returned per row.
        iou_threshold: boxes overlapping a kept box by more than this are suppressed.
        score_threshold: boxes scoring at or below this are never kept.

    Returns:
        ``(indices, num_valid)``: int32 [B, max_output_size] indices into N in descending score
        order (padding rows are 0), and int32 [B] the number of real entries per row.
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

    def one_row(args):
        row_boxes, row_scores = args
        indices, num_valid = tf.raw_ops.NonMaxSuppressionV4(
            boxes=row_boxes,
            scores=row_scores,
            max_output_size=max_output_size,
            iou_threshold=float(iou_threshold),
            score_threshold=float(score_threshold),
            pad_to_max_output_size=True,
        )
        return tf.cast(indices, tf.int32), tf.cast(num_valid, tf.int32)

    return _per_row(
        one_row,
        (yxyx, scores),
        (tf.TensorSpec([max_output_size], tf.int32), tf.TensorSpec([], tf.int32)),
    )


def multiclass_nms(
    boxes,
    scores,
    max_output_size: int,
    iou_threshold: float,
    score_threshold: float,
    class_agnostic: bool = False,
):
    """Per-class NMS, then the best ``max_output_size`` detections over all classes, as one NMS
    per image over class-offset boxes.

    Each class's boxes are moved to their own cell of a grid (``ceil(sqrt(C))`` cells a side,
    each wider than the span of the coordinates), so boxes of different classes never overlap
    and one greedy pass suppresses within classes only; stopping after ``max_output_size`` kept
    boxes gives the best ones over all classes. This is what TensorFlow's
    ``combined_non_max_suppression`` computes, in the one op every converter knows. The grid (not
    a row of C cells) keeps the shifted coordinates small: with 80 classes and 1333-pixel images
    they stay below 13,000, where float32 resolves 1/1024 pixel; the returned boxes are the
    unshifted ones.

    Args:
        boxes: float [B, N, C, 4] ``xyxy``, one box per candidate and class.
        scores: float [B, N, C].
        score_threshold: candidates scoring at or below this are dropped.
        class_agnostic: suppress across classes too (the boxes are not moved apart).

    Returns:
        ``(boxes [B, K, 4] xyxy, scores [B, K], classes int32 [B, K], num_valid int32 [B])``;
        rows past ``num_valid`` are zero.
    """
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    scores = tf.cast(tf.convert_to_tensor(scores), tf.float32)
    num_boxes, num_classes = boxes.shape[1], boxes.shape[2]
    batch = boxes.shape[0] if boxes.shape[0] is not None else tf.shape(boxes)[0]
    k = int(max_output_size)
    side = int(math.ceil(math.sqrt(num_classes)))
    cell = tf.reduce_max(boxes) - tf.minimum(tf.reduce_min(boxes), 0.0) + 1.0
    classes = tf.range(num_classes)
    corner = tf.cast(tf.stack([classes % side, classes // side], axis=-1), tf.float32) * cell
    shifted = boxes if class_agnostic else boxes + tf.tile(corner, [1, 2])  # [C, 4] broadcast
    flat_boxes = tf.reshape(boxes, [batch, num_boxes * num_classes, 4])
    flat_scores = tf.reshape(scores, [batch, num_boxes * num_classes])
    indices, num_valid = nms_padded(
        tf.reshape(shifted, [batch, num_boxes * num_classes, 4]),
        flat_scores,
        k,
        iou_threshold,
        score_threshold=score_threshold,
    )
    valid = tf.range(k)[None, :] < num_valid[:, None]
    out_boxes = tf.where(valid[..., None], tf.gather(flat_boxes, indices, batch_dims=1), 0.0)
    out_scores = tf.where(valid, tf.gather(flat_scores, indices, batch_dims=1), 0.0)
    out_classes = tf.where(valid, indices % num_classes, 0)
    return out_boxes, out_scores, out_classes, num_valid


def loss_and_gradients(compute_loss, variables):
    """``(loss, aux) = compute_loss()`` under a gradient tape; returns ``(aux, gradients)`` of
    ``loss`` with respect to ``variables``."""
    with tf.GradientTape() as tape:
        loss, aux = compute_loss()
    return aux, tape.gradient(loss, variables)


def num_replicas_in_sync() -> int:
    """Replicas of the current ``tf.distribute`` strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_mean(value):
    """``value`` averaged over the replicas of a ``tf.distribute`` strategy (itself without
    one); called inside a replica's step."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, value)


def is_multi_worker() -> bool:
    """Whether the current strategy is ``MultiWorkerMirroredStrategy``."""
    return isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy)


def is_tpu() -> bool:
    """Whether the current strategy is a ``TPUStrategy`` (which compiles every step with XLA)."""
    return isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)


@contextlib.contextmanager
def cpu_determinism(enabled: bool = True):
    """Run TensorFlow's ops deterministically inside the block on a machine without GPUs or
    TPUs (elsewhere, or with ``enabled=False``, nothing changes); the previous setting is
    restored afterwards.

    On CPU the gradient kernel of ``crop_and_resize`` (RoIAlign's, see
    :func:`crop_and_resize_roi_align`) adds the RoIs of an image into its gradient from several
    threads in no fixed order, so the same step gives gradients a few 1e-5 apart from run to
    run, which training amplifies. ``tf.config.experimental.enable_op_determinism`` gives such
    kernels one fixed order (the tiny shapes model trained no slower with it). Not turned on
    for GPUs and TPUs: some of their kernels (that gradient among them) have no deterministic
    version and would raise.
    """
    accelerators = tf.config.list_logical_devices("GPU") + tf.config.list_logical_devices("TPU")
    if not enabled or accelerators or tf_config.is_op_determinism_enabled():
        yield
        return
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        tf_config.disable_op_determinism()


def is_graph_tensor(value) -> bool:
    """Whether ``value`` is a TensorFlow tensor or variable seen while tracing a graph (its
    values are not known yet)."""
    return isinstance(value, (tf.Tensor, tf.Variable)) and not tf.executing_eagerly()


def is_tensor(value) -> bool:
    """Whether ``value`` is a TensorFlow tensor or variable."""
    return isinstance(value, (tf.Tensor, tf.Variable))


def _stack_levels(features):
    """The feature maps stacked vertically into one image per batch element.

    Each level gets a one-pixel edge-replicated border (RoIAlign's clamp for samples in
    [-1, 0) and (H - 1, H]) and zeros on the right up to the widest level. Stacking vertically
    rather than as [B * L, Hmax, Wmax, C] keeps the copy at ~1.4x the finest level, not 4x.
    Returns ``(image, heights, widths, row_offsets, total_rows, padded_width)``; a level's row 0
    is stacked row ``row_offsets[level]``.
    """
    dtype = features[0].dtype
    heights = [tf.shape(f)[1] for f in features]
    widths = [tf.shape(f)[2] for f in features]
    padded_width = tf.reduce_max(tf.stack(widths)) + 2
    blocks, row_offsets, total = [], [], 0
    for f, w in zip(features, widths, strict=True):
        if dtype not in (tf.float16, tf.float32, tf.float64):
            f = tf.cast(f, tf.float32)  # no bfloat16 gradient kernel
        f = tf.concat([f[:, :1], f, f[:, -1:]], axis=1)
        f = tf.concat([f[:, :, :1], f, f[:, :, -1:]], axis=2)
        f = tf.pad(f, [[0, 0], [0, 0], [0, padded_width - w - 2], [0, 0]])
        blocks.append(f)
        row_offsets.append(total + 1)
        total = total + tf.shape(f)[1]
    image = tf.concat(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    return image, heights, widths, row_offsets, total, padded_width


def crop_and_resize_roi_align(
    features, boxes, level, strides, roi_grid, output_size: int, sampling_ratio: int
):
    """RoIAlign by TensorFlow's fused ``crop_and_resize`` kernel (and its gradient kernel).

    The levels are stacked into one image (:func:`_stack_levels`); each RoI's
    ``output_size * sampling_ratio`` samples per side become one crop box of it, samples outside
    [-1, H] are masked to 0, and an ``sr`` x ``sr`` average pool gives the bins.

    Args:
        features: list of [B, H_l, W_l, C].
        boxes: float32 [B, R, 4] image pixels; ``level``: int32 [B, R], each box's map.
        strides: stride of each map; ``roi_grid(boxes, scale)``: ``(y0, bin_h, x0, bin_w)`` of
            the boxes scaled to their maps (the layer's aligned / unaligned convention).

    Returns [B, R, output_size, output_size, C] in the features' dtype.
    """
    features = [tf.convert_to_tensor(f) for f in features]
    dtype, channels = features[0].dtype, features[0].shape[-1]
    batch, num_rois = tf.shape(boxes)[0], boxes.shape[1]
    image, heights, widths, row_offsets, total, padded_width = _stack_levels(features)

    def pick(values):
        return tf.gather(tf.cast(tf.stack(values), tf.float32), level)

    n, sr = output_size, sampling_ratio
    count = n * sr
    steps = (tf.range(count, dtype=tf.float32) + 0.5) / sr

    def axis(start, bin_size, limit, offset, extent):
        pos = start[..., None] + bin_size[..., None] * steps  # [B, R, count]
        valid = (pos >= -1.0) & (pos <= limit[..., None])
        first = (start + bin_size * steps[0] + offset) / (extent - 1.0)
        last = (start + bin_size * steps[-1] + offset) / (extent - 1.0)
        return valid, first, last

    y0, bin_h, x0, bin_w = roi_grid(boxes, pick([1.0 / s for s in strides]))
    total = tf.cast(total, tf.float32)
    y_valid, ny1, ny2 = axis(y0, bin_h, pick(heights), pick(row_offsets), total)
    x_valid, nx1, nx2 = axis(x0, bin_w, pick(widths), 1.0, tf.cast(padded_width, tf.float32))
    crop_boxes = tf.reshape(tf.stack([ny1, nx1, ny2, nx2], axis=-1), (-1, 4))
    box_indices = tf.repeat(tf.range(batch), num_rois)
    samples = tf.image.crop_and_resize(
        image, crop_boxes, box_indices, (count, count), extrapolation_value=0.0
    )  # [B * R, count, count, C] float32
    mask = tf.cast(y_valid[..., :, None] & x_valid[..., None, :], tf.float32)
    samples = samples * tf.reshape(mask, (-1, count, count, 1))
    if sr > 1:
        samples = tf.nn.avg_pool2d(samples, sr, sr, "VALID")
    pooled = tf.reshape(samples, (batch, num_rois, n, n, channels))
    return tf.cast(pooled, dtype)


def fused_batch_norm_training(inputs, gamma, beta, epsilon: float):
    """Training-mode batch norm of NHWC ``inputs`` by the ``FusedBatchNormV3`` kernel.

    ``gamma`` / ``beta`` None stand for ones / zeros. Returns ``(outputs, mean, variance)``
    with the batch's biased variance (what Keras' moving statistics use; the kernel reports the
    unbiased one, which is rescaled here).
    """
    channels = inputs.shape[-1]
    gamma = tf.ones((channels,), "float32") if gamma is None else gamma
    beta = tf.zeros((channels,), "float32") if beta is None else beta
    outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
        inputs,
        tf.cast(gamma, "float32"),
        tf.cast(beta, "float32"),
        epsilon=epsilon,
        is_training=True,
    )
    shape = tf.shape(inputs)
    count = tf.cast(shape[0] * shape[1] * shape[2], "float32")
    return outputs, mean, unbiased_variance * (count - 1.0) / count
