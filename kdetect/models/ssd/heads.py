"""SSD's default boxes and its head: per-level class and box predictors, their training targets
and losses (with hard negative mining), and the decoding of detections.

Default boxes (Liu et al., 2016, section 2.2): level ``k`` of ``n`` has a scale ``s_k`` (given,
or spread evenly from ``min_ratio`` to ``max_ratio`` with 1.0 appended); each cell of its grid
gets a square of side ``s_k``, a square of side ``sqrt(s_k * s_{k+1})`` and, per aspect ratio
``r``, the boxes ``s_k * sqrt(r)`` by ``s_k / sqrt(r)`` and its transpose, all relative to the
frame. Cell centres are ``(i + 0.5) / f`` where ``f`` is ``frame / step`` (or the grid size);
sizes are clipped to [0, 1] when ``clip``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from kdetect.layers.batch_norm import BatchNormalization
from kdetect.ops.boxes import BoxCoder, clip_boxes, pairwise_iou
from kdetect.ops.losses import smooth_l1
from kdetect.ops.matching import Matcher
from kdetect.ops.tf_ops import multiclass_nms


def default_box_scales(num_levels: int, min_ratio: float, max_ratio: float) -> list[float]:
    """The scales of ``num_levels`` levels spread evenly over ``[min_ratio, max_ratio]``, plus
    1.0 (the second square of the last level reads one scale past it)."""
    if num_levels == 1:
        return [min_ratio, max_ratio]
    span = max_ratio - min_ratio
    return [min_ratio + span * k / (num_levels - 1.0) for k in range(num_levels)] + [1.0]


def default_box_shapes(scales, aspect_ratios) -> list[np.ndarray]:
    """(width, height) of each level's default boxes, relative to the frame, float32."""
    shapes = []
    for k, ratios in enumerate(aspect_ratios):
        s_k = scales[k]
        pairs = [[s_k, s_k], [math.sqrt(s_k * scales[k + 1])] * 2]
        for ratio in ratios:
            root = math.sqrt(ratio)
            pairs += [[s_k * root, s_k / root], [s_k / root, s_k * root]]
        shapes.append(np.asarray(pairs, np.float32))
    return shapes


def default_boxes(frame, grid_sizes, scales, aspect_ratios, steps=None, clip=True) -> np.ndarray:
    """``xyxy`` default boxes [A, 4] in pixels of a ``frame`` (height, width), level by level,
    cells row-major and the boxes of a cell fastest (the order of the head's outputs); float32
    arithmetic throughout, as torchvision computes them."""
    height, width = (np.float32(v) for v in frame)
    size = np.array([width, height], np.float32)
    levels = []
    for k, (shape, (grid_h, grid_w)) in enumerate(
        zip(default_box_shapes(scales, aspect_ratios), grid_sizes, strict=True)
    ):
        if steps is not None:
            f_x, f_y = np.float32(width / steps[k]), np.float32(height / steps[k])
        else:
            f_x, f_y = np.float32(grid_w), np.float32(grid_h)
        xs = (np.arange(grid_w, dtype=np.float32) + np.float32(0.5)) / f_x
        ys = (np.arange(grid_h, dtype=np.float32) + np.float32(0.5)) / f_y
        cy, cx = np.meshgrid(ys, xs, indexing="ij")
        centres = np.stack([cx.reshape(-1), cy.reshape(-1)], -1)
        centres = np.repeat(centres, len(shape), axis=0)
        wh = np.clip(shape, 0.0, 1.0) if clip else shape
        wh = np.tile(wh, (grid_h * grid_w, 1))
        half = np.float32(0.5) * wh
        levels.append(np.concatenate([(centres - half) * size, (centres + half) * size], -1))
    return np.concatenate(levels, 0).astype(np.float32)


@keras.saving.register_keras_serializable(package="kdetect")
class SSDHead(keras.layers.Layer):
    """SSD's predictors over its feature maps, and everything done with their outputs.

    Per level, a class predictor (``num_classes + 1`` logits per default box, background first)
    and a box predictor (4 deltas per default box): a 3x3 conv each (``conv``, SSD), or a 3x3
    depthwise conv + batch norm + ReLU6 and a 1x1 conv (``depthwise``, SSDlite).

    Training (:meth:`losses`): a default box is matched to the ground truth it overlaps most if
    that IoU is at least ``iou_thresh``, and each ground truth's best default box is matched to
    it whatever the IoU. Box loss: smooth L1 (beta 1) of the encoded deltas over the matched
    boxes. Class loss: cross entropy over the matched boxes and, per image, the
    ``(1 - positive_fraction) / positive_fraction`` times as many unmatched boxes with the
    highest loss (hard negative mining). Both are divided by the batch's matched boxes.

    Decoding (:meth:`decode`): softmax; boxes decoded and clipped to the image; per class the
    ``topk_candidates`` best scores above ``score_thresh``; NMS at ``nms_thresh`` within each
    class (across classes with ``class_agnostic``); the ``detections_per_img`` best over all
    classes.
    """

    FINAL_NMS = True

    def __init__(
        self,
        num_classes: int,
        num_anchors: Sequence[int],
        head_type: str = "conv",
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        detections_per_img: int = 200,
        topk_candidates: int = 400,
        iou_thresh: float = 0.5,
        positive_fraction: float = 0.25,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        batch_norm_epsilon: float = 1e-3,
        batch_norm_momentum: float = 0.97,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if head_type not in ("conv", "depthwise"):
            raise ValueError(f"head_type must be 'conv' or 'depthwise', got {head_type!r}")
        if not 0.0 < positive_fraction < 1.0:
            raise ValueError(f"positive_fraction must be in (0, 1), got {positive_fraction}")
        self.num_classes = int(num_classes)
        self.num_anchors = tuple(int(a) for a in num_anchors)
        self.head_type = head_type
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.class_agnostic = False
        self.detections_per_img = int(detections_per_img)
        self.topk_candidates = int(topk_candidates)
        self.iou_thresh, self.positive_fraction = float(iou_thresh), float(positive_fraction)
        self.bbox_reg_weights = tuple(float(w) for w in bbox_reg_weights)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.box_coder = BoxCoder(self.bbox_reg_weights)
        self.matcher = Matcher(self.iou_thresh, self.iou_thresh)
        self.cls_branches = [
            self._branch(a * (self.num_classes + 1), f"cls_{i}")
            for i, a in enumerate(self.num_anchors)
        ]
        self.box_branches = [
            self._branch(a * 4, f"box_{i}") for i, a in enumerate(self.num_anchors)
        ]

    def _branch(self, outputs: int, name: str) -> list:
        """The layers of one predictor: [conv] or [depthwise, batch norm, 1x1 conv]."""
        if self.head_type == "conv":
            return [
                keras.layers.Conv2D(
                    outputs, 3, padding="same", kernel_initializer="glorot_uniform", name=name
                )
            ]
        init = keras.initializers.RandomNormal(stddev=0.03)
        return [
            keras.layers.DepthwiseConv2D(
                3, padding="same", use_bias=False, depthwise_initializer=init, name=f"{name}_dw"
            ),
            BatchNormalization(
                epsilon=self.batch_norm_epsilon,
                momentum=self.batch_norm_momentum,
                name=f"{name}_bn",
            ),
            keras.layers.Conv2D(outputs, 1, kernel_initializer=init, name=f"{name}_proj"),
        ]

    def build(self, input_shape):
        for shape, cls, box in zip(input_shape, self.cls_branches, self.box_branches, strict=True):
            for branch in (cls, box):
                current = tuple(shape)
                for layer in branch:
                    layer.build(current)
                    current = layer.compute_output_shape(current)
        self.built = True

    @staticmethod
    def _run(branch, x, training):
        for layer in branch:
            if isinstance(layer, keras.layers.BatchNormalization):
                x = ops.relu6(layer(x, training=training))
            else:
                x = layer(x)
        return x

    def call(self, features, training=False):
        """Feature maps -> ``(class logits [B, A, C + 1], box deltas [B, A, 4])``, default
        boxes in the order of :func:`default_boxes`."""
        logits, deltas = [], []
        for x, cls, box in zip(features, self.cls_branches, self.box_branches, strict=True):
            batch = ops.shape(x)[0]
            logits.append(
                ops.reshape(self._run(cls, x, training), (batch, -1, self.num_classes + 1))
            )
            deltas.append(ops.reshape(self._run(box, x, training), (batch, -1, 4)))
        return ops.concatenate(logits, axis=1), ops.concatenate(deltas, axis=1)

    # --- Training -------------------------------------------------------------------------
    def match(self, anchors, gt_boxes, gt_valid):
        """int32 [B, A]: the matched ground truth of each default box, negative if none."""
        iou = pairwise_iou(anchors, gt_boxes)  # [B, A, M]
        matches = self.matcher(iou, gt_valid)
        # Each valid ground truth claims its best default box (the last one claiming wins).
        masked = ops.where(ops.expand_dims(gt_valid, 1), iou, -2.0)
        best = ops.argmax(masked, axis=1)  # [B, M]
        claims = ops.one_hot(best, ops.shape(iou)[1], axis=1) > 0  # [B, A, M]
        claims &= ops.expand_dims(gt_valid, 1)
        index = ops.arange(ops.shape(iou)[2], dtype="int32")
        claimed = ops.max(ops.where(claims, index, -1), axis=-1)
        return ops.cast(ops.where(claimed >= 0, claimed, matches), "int32")

    def losses(self, class_logits, box_deltas, anchors, gt_boxes, gt_labels):
        """``(class loss, box loss)`` of a batch (see the class docstring)."""
        class_logits = ops.cast(class_logits, "float32")
        box_deltas = ops.cast(box_deltas, "float32")
        anchors = ops.convert_to_tensor(anchors, "float32")
        gt_valid = gt_labels >= 0
        matches = self.match(anchors, gt_boxes, gt_valid)
        positive = matches >= 0
        safe = ops.maximum(matches, 0)
        matched_boxes = ops.take_along_axis(gt_boxes, ops.expand_dims(safe, -1), axis=1)
        targets = self.box_coder.encode(matched_boxes, anchors[None])
        box_terms = ops.sum(smooth_l1(box_deltas - targets, 1.0), axis=-1)
        positive_f = ops.cast(positive, "float32")
        num_positive = ops.sum(positive_f)
        # torchvision's labels: 0 background, class i at i + 1
        labels = ops.where(positive, ops.take_along_axis(gt_labels, safe, axis=1) + 1, 0)
        log_probs = ops.log_softmax(class_logits, axis=-1)
        cls_terms = -ops.squeeze(
            ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1), -1
        )
        # Hard negatives: per image, the unmatched boxes of highest loss, ranked with the
        # matched ones last.
        ratio = (1.0 - self.positive_fraction) / self.positive_fraction
        num_negative = ratio * ops.sum(positive_f, axis=1, keepdims=True)
        negative_terms = ops.where(positive, -float("inf"), cls_terms)
        order = ops.argsort(-negative_terms, axis=1)
        ranks = ops.argsort(order, axis=1)
        hard = ops.cast(ranks, "float32") < num_negative
        normaliser = ops.maximum(num_positive, 1.0)
        cls_loss = (
            ops.sum(ops.where(positive, cls_terms, 0.0)) + ops.sum(ops.where(hard, cls_terms, 0.0))
        ) / normaliser
        box_loss = ops.sum(box_terms * positive_f) / normaliser
        return cls_loss, box_loss

    # --- Inference ------------------------------------------------------------------------
    def decode(self, class_logits, box_deltas, anchors, image_size):
        """The predict contract's detections (0-based labels, -1 padding rows)."""
        scores = ops.softmax(ops.cast(class_logits, "float32"), axis=-1)[..., 1:]
        anchors = ops.convert_to_tensor(anchors, "float32")
        boxes = self.box_coder.decode(ops.cast(box_deltas, "float32"), anchors[None])
        boxes = clip_boxes(boxes, image_size[0], image_size[1])
        # per class, the topk_candidates best scores: [B, C, K]
        k = min(self.topk_candidates, int(anchors.shape[0]))
        top_scores, top_index = ops.top_k(ops.transpose(scores, (0, 2, 1)), k)
        top_boxes = ops.take_along_axis(
            ops.expand_dims(boxes, 1), ops.expand_dims(top_index, -1), axis=2
        )  # [B, C, K, 4]
        out_boxes, out_scores, classes, count = multiclass_nms(
            ops.transpose(top_boxes, (0, 2, 1, 3)),
            ops.transpose(top_scores, (0, 2, 1)),
            self.detections_per_img,
            self.nms_thresh,
            self.score_thresh,
            self.class_agnostic,
        )
        valid = ops.arange(self.detections_per_img)[None, :] < count[:, None]
        return {
            "boxes": out_boxes,
            "confidence": out_scores,
            "labels": ops.where(valid, ops.cast(classes, "int32"), -1),
            "num_detections": ops.cast(count, "int32"),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "num_anchors": self.num_anchors,
            "head_type": self.head_type,
            "score_thresh": self.score_thresh,
            "nms_thresh": self.nms_thresh,
            "detections_per_img": self.detections_per_img,
            "topk_candidates": self.topk_candidates,
            "iou_thresh": self.iou_thresh,
            "positive_fraction": self.positive_fraction,
            "bbox_reg_weights": self.bbox_reg_weights,
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "batch_norm_momentum": self.batch_norm_momentum,
        }
