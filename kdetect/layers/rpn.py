"""Region proposal network: the head, its training targets and proposal generation.

As in Luminoth, the training-only part (:class:`RPNTargetAssigner`) is separate from the part
inference also runs (:class:`RPNHead`, :class:`ProposalGenerator`).
"""

from __future__ import annotations

import keras
from keras import ops

from kdetect.layers.base import MatchAndSample, PipelineLayer
from kdetect.ops.boxes import BoxCoder, clip_boxes, pairwise_iou
from kdetect.ops.losses import SMOOTH_L1_BETA, normaliser, smooth_l1
from kdetect.ops.tf_ops import nms_padded


@keras.saving.register_keras_serializable(package="kdetect")
class RPNHead(keras.layers.Layer):
    """A 3x3 conv followed by two sibling 1x1 convs, shared across pyramid levels.

    For every level's feature map [B, H, W, C] it predicts, per anchor, one objectness logit and
    four box deltas. Outputs are flattened in anchor-grid order (row-major cells, anchors fastest),
    matching :func:`kdetect.ops.anchors.grid_anchors`.

    Args:
        num_anchors: anchors per feature-map cell.
        channels: width of the 3x3 conv.
        conv_depth: number of 3x3 conv + ReLU layers (torchvision's v2 detector uses 2).
    """

    def __init__(self, num_anchors: int, channels: int = 256, conv_depth: int = 1, **kwargs):
        super().__init__(**kwargs)
        if conv_depth < 1:
            raise ValueError(f"conv_depth must be at least 1, got {conv_depth}")
        self.num_anchors = num_anchors
        self.channels = channels
        self.conv_depth = int(conv_depth)
        init = keras.initializers.RandomNormal(stddev=0.01)

        def conv3x3(name):
            return keras.layers.Conv2D(
                channels, 3, padding="same", activation="relu", kernel_initializer=init, name=name
            )

        self.conv = conv3x3("conv")
        self.extra_convs = [conv3x3(f"conv_{i}") for i in range(1, self.conv_depth)]
        self.objectness = keras.layers.Conv2D(
            num_anchors, 1, kernel_initializer=init, name="objectness"
        )
        self.box_deltas = keras.layers.Conv2D(
            num_anchors * 4, 1, kernel_initializer=init, name="box_deltas"
        )

    def build(self, input_shape):
        # input_shape: one feature-map shape (all levels share channels), or the list of every
        # level's shapes when Keras builds the layer on its first call with a list of features.
        if input_shape and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[0]
        self.conv.build(input_shape)
        shape = tuple(input_shape[:-1]) + (self.channels,)
        for conv in self.extra_convs:
            conv.build(shape)
        self.objectness.build(shape)
        self.box_deltas.build(shape)

    def call(self, features):
        """``features``: list of [B, H_l, W_l, C].

        Returns (logits [B, A_total], deltas [B, A_total, 4]).
        """
        logits, deltas = [], []
        for feature in features:
            x = self.conv(feature)
            for conv in self.extra_convs:
                x = conv(x)
            batch = ops.shape(x)[0]
            logits.append(ops.reshape(self.objectness(x), (batch, -1)))
            deltas.append(ops.reshape(self.box_deltas(x), (batch, -1, 4)))
        return ops.concatenate(logits, axis=1), ops.concatenate(deltas, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_anchors": self.num_anchors,
                "channels": self.channels,
                "conv_depth": self.conv_depth,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kdetect")
class RPNTargetAssigner(MatchAndSample):
    """Training targets of the RPN: which anchors are objects, which background, and how to move
    the positive ones onto their object.

    Anchors with IoU >= ``fg_iou_thresh`` with some ground truth (plus each ground truth's best
    anchors) are positive, those below ``bg_iou_thresh`` negative, the rest ignored; then
    ``batch_size_per_image`` of them are sampled with at most ``positive_fraction`` positive.

    Returns ``(labels, box_targets)``: float [B, A] with 1 (sampled positive), 0 (sampled
    negative) or -1 (not sampled), and float [B, A, 4] deltas (meaningful where labels == 1).
    """

    ALLOW_LOW_QUALITY_MATCHES = True  # every object gets at least its best anchors

    DEFAULTS = {
        "fg_iou_thresh": 0.7,
        "bg_iou_thresh": 0.3,
        "batch_size_per_image": 256,
        "positive_fraction": 0.5,
    }

    def call(self, anchors, gt_boxes, gt_valid, seed=None):
        """``anchors`` [A, 4]; ``gt_boxes`` [B, M, 4]; ``gt_valid`` bool [B, M]."""
        batch = ops.shape(gt_boxes)[0]
        anchors = ops.broadcast_to(ops.expand_dims(anchors, 0), (batch,) + tuple(anchors.shape))
        iou = pairwise_iou(anchors, gt_boxes)  # [B, A, M]
        matches = self.matcher(iou, gt_valid)
        positive = matches >= 0
        negative = matches == -1
        sampled_pos, sampled_neg = self.sampler(positive, negative, seed=seed)
        labels = ops.where(sampled_pos, 1.0, ops.where(sampled_neg, 0.0, -1.0))
        matched_boxes = ops.take_along_axis(
            gt_boxes, ops.expand_dims(ops.maximum(matches, 0), -1), axis=1
        )
        box_targets = self.box_coder.encode(matched_boxes, anchors)
        return labels, box_targets

    def losses(self, logits, deltas, anchors, gt_boxes, gt_labels, seed=None):
        """The RPN's two loss terms, as torchvision's: objectness (binary cross-entropy) over
        the sampled anchors and box regression (smooth L1, beta 1/9) over the sampled positives,
        each summed and divided by the number sampled. ``anchors`` [A, 4] (all levels)."""
        labels, box_targets = self(anchors, gt_boxes, gt_labels >= 0, seed=seed)
        sampled = ops.cast(labels >= 0, "float32")
        positive = ops.cast(labels > 0, "float32")
        count = normaliser(sampled)
        cls = ops.binary_crossentropy(ops.maximum(labels, 0.0), logits, from_logits=True)
        box = ops.sum(smooth_l1(deltas - box_targets, SMOOTH_L1_BETA), axis=-1)
        return ops.sum(cls * sampled) / count, ops.sum(box * positive) / count


@keras.saving.register_keras_serializable(package="kdetect")
class ProposalGenerator(PipelineLayer):
    """Turns RPN outputs into a fixed number of object proposals per image.

    Per pyramid level: keep the ``pre_nms_top_n`` highest-scoring anchors, decode their deltas,
    clip to the image, discard boxes smaller than ``min_size`` or scoring below
    ``score_thresh``; then non-maximum suppression at ``nms_thresh`` within each level (levels
    never suppress each other), and finally the ``post_nms_top_n`` best over all levels. This is
    torchvision's ``RegionProposalNetwork.filter_proposals``; each level runs its own NMS call
    rather than one call over boxes shifted apart per level, which would round coordinates.
    Training uses ``pre_nms_top_n_train`` / ``post_nms_top_n_train`` when given (torchvision's
    ``training`` / ``testing`` counts), inference the plain ones.

    Returns ``(proposals, valid)``: [B, post_nms_top_n, 4] ``xyxy`` and bool [B, post_nms_top_n]
    (False for padding rows when fewer boxes survive). Gradients do not flow into proposals.
    """

    def __init__(
        self,
        pre_nms_top_n: int,
        post_nms_top_n: int,
        nms_thresh: float = 0.7,
        min_size: float = 1e-3,
        score_thresh: float = 0.0,
        box_coder: BoxCoder | dict | None = None,
        pre_nms_top_n_train: int | None = None,
        post_nms_top_n_train: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.post_nms_top_n = int(post_nms_top_n)
        self.nms_thresh = float(nms_thresh)
        self.min_size = float(min_size)
        self.score_thresh = float(score_thresh)
        self.box_coder = BoxCoder.from_value(box_coder, (1.0, 1.0, 1.0, 1.0))
        self.pre_nms_top_n_train = int(
            pre_nms_top_n if pre_nms_top_n_train is None else pre_nms_top_n_train
        )
        self.post_nms_top_n_train = int(
            post_nms_top_n if post_nms_top_n_train is None else post_nms_top_n_train
        )

    def call(self, logits, deltas, anchors_per_level, image_size, training=False):
        """``anchors_per_level``: list of [A_l, 4]; ``image_size``: (height, width) to clip to,
        ints or scalar tensors, or each image's own as a [B, 2] tensor (torchvision clips each
        image's proposals to its content, not to the padded frame); ``training`` picks the
        training counts."""
        height, width = _clip_sizes(image_size)
        logits = ops.stop_gradient(ops.cast(logits, "float32"))
        deltas = ops.stop_gradient(ops.cast(deltas, "float32"))
        pre_nms_top_n = self.pre_nms_top_n_train if training else self.pre_nms_top_n
        post_nms_top_n = self.post_nms_top_n_train if training else self.post_nms_top_n
        per_level = min(pre_nms_top_n, post_nms_top_n)
        level_boxes, level_scores = [], []
        start = 0
        for anchors in anchors_per_level:
            anchors = ops.convert_to_tensor(anchors)
            count = anchors.shape[0] if anchors.shape[0] is not None else ops.shape(anchors)[0]
            level_logits = logits[:, start : start + count]
            level_deltas = deltas[:, start : start + count]
            start = start + count
            k = (
                min(pre_nms_top_n, count)
                if isinstance(count, int)
                else ops.minimum(pre_nms_top_n, count)
            )
            top_logits, top_idx = ops.top_k(level_logits, k)
            top_deltas = ops.take_along_axis(level_deltas, ops.expand_dims(top_idx, -1), axis=1)
            top_anchors = ops.take(anchors, top_idx, axis=0)
            boxes = clip_boxes(self.box_coder.decode(top_deltas, top_anchors), height, width)
            scores = ops.sigmoid(top_logits)
            x1, y1, x2, y2 = ops.unstack(boxes, 4, axis=-1)
            keep = ((x2 - x1) >= self.min_size) & ((y2 - y1) >= self.min_size)
            keep = keep & (scores >= self.score_thresh)
            scores = ops.where(keep, scores, -1.0)
            indices, num_valid = nms_padded(
                boxes, scores, per_level, self.nms_thresh, score_threshold=-0.5
            )
            kept = ops.arange(per_level)[None, :] < ops.expand_dims(num_valid, -1)
            level_boxes.append(ops.take_along_axis(boxes, ops.expand_dims(indices, -1), axis=1))
            level_scores.append(ops.where(kept, ops.take_along_axis(scores, indices, axis=1), -1.0))
        boxes = ops.concatenate(level_boxes, axis=1)
        scores = ops.concatenate(level_scores, axis=1)
        num_out = min(post_nms_top_n, boxes.shape[1])
        top_scores, order = ops.top_k(scores, num_out)
        proposals = ops.take_along_axis(boxes, ops.expand_dims(order, -1), axis=1)
        valid = top_scores >= 0.0
        if num_out < post_nms_top_n:  # fewer candidates than rows: pad with invalid rows
            batch = ops.shape(proposals)[0]
            short = post_nms_top_n - num_out
            proposals = ops.concatenate([proposals, ops.zeros((batch, short, 4))], axis=1)
            valid = ops.concatenate([valid, ops.zeros((batch, short), "bool")], axis=1)
        proposals = ops.where(ops.expand_dims(valid, -1), proposals, 0.0)
        return proposals, valid

    def get_config(self):
        return {
            **super().get_config(),
            "pre_nms_top_n": self.pre_nms_top_n,
            "post_nms_top_n": self.post_nms_top_n,
            "nms_thresh": self.nms_thresh,
            "min_size": self.min_size,
            "score_thresh": self.score_thresh,
            "box_coder": self.box_coder.get_config(),
            "pre_nms_top_n_train": self.pre_nms_top_n_train,
            "post_nms_top_n_train": self.post_nms_top_n_train,
        }


def _clip_sizes(image_size):
    """(height, width) to clip boxes [B, K, 4] to: scalars as given, or [B, 1] columns of a
    per-image [B, 2] tensor."""
    if len(getattr(image_size, "shape", ())) == 2:
        sizes = ops.cast(image_size, "float32")
        return sizes[:, 0:1], sizes[:, 1:2]
    height, width = image_size
    return height, width
