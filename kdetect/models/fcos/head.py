"""FCOS' head (Tian et al., 2019): per-location class scores, box side distances and
centre-ness, and the centre-sampling assignment and losses that train them."""

from __future__ import annotations

import math

import keras
from keras import ops

from kdetect.models.retinanet.head import conv_tower, per_location, predictor, run_tower
from kdetect.ops.losses import giou_loss, normaliser, sigmoid_focal_loss


def box_centers(boxes):
    """Centres ``[..., 2]`` of ``xyxy`` boxes, as ``(x1 + x2) / 2``."""
    return (boxes[..., :2] + boxes[..., 2:]) * 0.5


class LinearBoxCoder:
    """Boxes as the distances of their four sides from a location's centre, in units of the
    location's anchor size: ``(cx - x1, cy - y1, x2 - cx, y2 - cy) / size``."""

    @staticmethod
    def encode(boxes, anchors):
        cx, cy = ops.unstack(box_centers(anchors), 2, axis=-1)
        x1, y1, x2, y2 = ops.unstack(boxes, 4, axis=-1)
        w, h = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
        return ops.stack([(cx - x1) / w, (cy - y1) / h, (x2 - cx) / w, (y2 - cy) / h], axis=-1)

    @staticmethod
    def decode(distances, anchors):
        cx, cy = ops.unstack(box_centers(anchors), 2, axis=-1)
        w, h = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
        left, top, right, bottom = ops.unstack(distances, 4, axis=-1)
        return ops.stack([cx - left * w, cy - top * h, cx + right * w, cy + bottom * h], axis=-1)


@keras.saving.register_keras_serializable(package="kdetect")
class FCOSHead(keras.layers.Layer):
    """Class tower and box tower (each ``conv_depth`` 3x3 convs with bias, GroupNorm(32) and
    ReLU) shared by every pyramid level: sigmoid class logits (bias at ``prior_probability``),
    non-negative side distances (ReLU) and a centre-ness logit per location.

    Assignment (:meth:`assign`): a location is positive for a box when its centre lies inside
    the box, within ``center_sampling_radius`` anchor sizes of the box centre, and the box's
    largest side distance lies in the level's range (4 to 8 anchor sizes; no lower bound on
    the first level, no upper bound on the last); among several such boxes, the smallest.

    Losses (:meth:`losses`), each summed over the batch and divided by its positive count:
    focal loss over all locations and classes, GIoU loss of the decoded boxes and binary
    cross-entropy of centre-ness against ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``
    of the positives.
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 256,
        conv_depth: int = 4,
        prior_probability: float = 0.01,
        center_sampling_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if channels % 32:
            raise ValueError(f"FCOSHead needs channels divisible by 32, got {channels}")
        self.num_classes, self.channels = int(num_classes), int(channels)
        self.conv_depth, self.prior_probability = int(conv_depth), float(prior_probability)
        self.center_sampling_radius = float(center_sampling_radius)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.box_coder = LinearBoxCoder()

    def build(self, input_shape=None):
        depth, channels = self.conv_depth, self.channels
        self.cls_convs, self.cls_norms = conv_tower("cls", depth, channels, True, bias=True)
        self.box_convs, self.box_norms = conv_tower("box", depth, channels, True, bias=True)
        prior = -math.log((1.0 - self.prior_probability) / self.prior_probability)
        self.cls_logits = predictor("cls_logits", self.num_classes, channels, prior)
        self.bbox_reg = predictor("bbox_reg", 4, channels)
        self.bbox_ctrness = predictor("bbox_ctrness", 1, channels)
        self.built = True

    def call(self, features):
        """Per level: class logits [B, N_l, C], distances [B, N_l, 4], centre-ness [B, N_l]."""
        logits, distances, centerness = [], [], []
        for x in features:
            logits.append(
                per_location(
                    self.cls_logits(run_tower(self.cls_convs, self.cls_norms, x)), self.num_classes
                )
            )
            box = run_tower(self.box_convs, self.box_norms, x)
            distances.append(per_location(ops.relu(self.bbox_reg(box)), 4))
            centerness.append(per_location(self.bbox_ctrness(box), 1)[..., 0])
        return logits, distances, centerness

    def assign(self, anchors, gt_boxes, gt_labels):
        """Index [B, N] of the box each location of ``anchors`` (a list per level of [N_l, 4])
        is assigned, -1 for none."""
        lower, upper = [], []
        for level, a in enumerate(anchors):
            size = a[:, 2] - a[:, 0]
            lower.append(size * 4.0 if level > 0 else ops.zeros_like(size))
            upper.append(size * 8.0 if level < len(anchors) - 1 else ops.full_like(size, math.inf))
        anchors = ops.concatenate(anchors, axis=0)
        lower, upper = (
            ops.concatenate(lower, 0)[None, :, None],
            ops.concatenate(upper, 0)[None, :, None],
        )
        size = (anchors[:, 2] - anchors[:, 0])[None, :, None]
        centers = box_centers(anchors)[None, :, None, :]  # [1, N, 1, 2]
        offset = ops.max(ops.abs(centers - box_centers(gt_boxes)[:, None, :, :]), axis=-1)
        match = offset < self.center_sampling_radius * size
        x, y = centers[..., 0], centers[..., 1]
        x1, y1, x2, y2 = (gt_boxes[:, None, :, i] for i in range(4))
        sides = ops.stack([x - x1, y - y1, x2 - x, y2 - y], axis=-1)  # [B, N, M, 4]
        match &= ops.min(sides, axis=-1) > 0
        reach = ops.max(sides, axis=-1)
        match &= (reach > lower) & (reach < upper)
        match &= (gt_labels >= 0)[:, None, :]
        area = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])
        # The smallest box wins: the same float32 priority torchvision ranks by.
        priority = ops.cast(match, "float32") * (1e8 - area[:, None, :])
        best = ops.max(priority, axis=-1)
        return ops.where(best < 1e-5, -1, ops.cast(ops.argmax(priority, axis=-1), "int32"))

    def predictions(self, outputs, anchors):
        """Per level: scores ``sqrt(sigmoid(class) * sigmoid(centre-ness))`` [B, N_l, C] and
        the boxes decoded from each location of ``anchors`` (a list per level of [N_l, 4])."""
        logits, distances, centerness = outputs
        scores = [
            ops.sqrt(
                ops.sigmoid(ops.cast(x, "float32")) * ops.sigmoid(ops.cast(c, "float32"))[..., None]
            )
            for x, c in zip(logits, centerness, strict=True)
        ]
        boxes = [
            self.box_coder.decode(ops.cast(d, "float32"), a[None])
            for d, a in zip(distances, anchors, strict=True)
        ]
        return scores, boxes

    def losses(self, outputs, anchors, gt_boxes, gt_labels):
        """(classification, box, centre-ness) losses of the outputs (per level) of ``anchors``
        (a list per level of [N_l, 4]) against padded ground truth (labels -1 = padding)."""
        logits, distances, centerness = (
            ops.cast(ops.concatenate(x, axis=1), "float32") for x in outputs
        )
        matches = self.assign(anchors, gt_boxes, gt_labels)
        anchors = ops.concatenate(anchors, axis=0)[None]
        foreground = matches >= 0
        weight = ops.cast(foreground, "float32")
        count = normaliser(weight)
        index = ops.maximum(matches, 0)
        labels = ops.take_along_axis(ops.maximum(gt_labels, 0), index, axis=1)
        targets = ops.one_hot(labels, self.num_classes) * weight[..., None]
        focal = sigmoid_focal_loss(logits, targets, self.focal_alpha, self.focal_gamma)
        cls_loss = ops.sum(focal) / count
        matched = ops.take_along_axis(gt_boxes, index[..., None], axis=1)
        giou = giou_loss(self.box_coder.decode(distances, anchors), matched)
        box_loss = ops.sum(ops.where(foreground, giou, 0.0)) / count
        sides = self.box_coder.encode(matched, anchors)
        sides = ops.where(foreground[..., None], sides, 1.0)
        left_right, top_bottom = sides[..., 0::2], sides[..., 1::2]
        target = ops.sqrt(
            ops.min(left_right, -1)
            / ops.max(left_right, -1)
            * (ops.min(top_bottom, -1) / ops.max(top_bottom, -1))
        )
        bce = ops.binary_crossentropy(target, centerness, from_logits=True)
        centerness_loss = ops.sum(ops.where(foreground, bce, 0.0)) / count
        return cls_loss, box_loss, centerness_loss

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "channels": self.channels,
            "conv_depth": self.conv_depth,
            "prior_probability": self.prior_probability,
            "center_sampling_radius": self.center_sampling_radius,
            "focal_alpha": self.focal_alpha,
            "focal_gamma": self.focal_gamma,
        }
