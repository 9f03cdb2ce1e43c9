"""RetinaNet's head (Lin et al., 2017): two conv towers shared by every pyramid level, and the
training targets and losses of its outputs."""

from __future__ import annotations

import math

import keras
from keras import ops

from kdetect.ops.boxes import BoxCoder, pairwise_iou
from kdetect.ops.losses import giou_loss, sigmoid_focal_loss
from kdetect.ops.matching import BETWEEN_THRESHOLDS, Matcher

BOX_LOSSES = ("l1", "giou")


def conv_tower(prefix: str, depth: int, channels: int, group_norm: bool, bias: bool | None = None):
    """``depth`` 3x3 convs of ``channels`` (weights N(0, 0.01), bias 0), each followed by
    group norm (32 groups, when ``group_norm``) and ReLU. The convs have a bias unless
    ``bias`` is False (None: only without group norm)."""
    convs, norms = [], []
    for i in range(depth):
        conv = keras.layers.Conv2D(
            channels,
            3,
            padding="same",
            use_bias=not group_norm if bias is None else bias,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name=f"{prefix}_conv_{i}",
        )
        conv.build((None, None, None, channels))
        convs.append(conv)
        norm = None
        if group_norm:
            norm = keras.layers.GroupNormalization(32, epsilon=1e-5, name=f"{prefix}_norm_{i}")
            norm.build((None, None, None, channels))
        norms.append(norm)
    return convs, norms


def run_tower(convs, norms, x):
    for conv, norm in zip(convs, norms, strict=True):
        x = conv(x)
        x = ops.relu(x if norm is None else norm(x))
    return x


def predictor(name: str, outputs: int, channels: int, bias: float = 0.0):
    """The 3x3 conv that ends a tower (weights N(0, 0.01), constant bias)."""
    conv = keras.layers.Conv2D(
        outputs,
        3,
        padding="same",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        bias_initializer=keras.initializers.Constant(bias),
        name=name,
    )
    conv.build((None, None, None, channels))
    return conv


def per_location(x, width: int):
    """[B, H, W, A * width] -> [B, H * W * A, width] (cells row-major, anchors fastest)."""
    return ops.reshape(x, (ops.shape(x)[0], -1, width))


@keras.saving.register_keras_serializable(package="kdetect")
class RetinaNetHead(keras.layers.Layer):
    """Class and box towers run on every pyramid level with the same weights.

    The classification tower ends in ``num_anchors * num_classes`` sigmoid logits per location,
    their bias set so that every class starts at probability ``prior_probability``; the box
    tower in ``num_anchors * 4`` deltas. ``group_norm`` puts GroupNorm(32) after each tower conv
    (torchvision's v2).

    Training (:meth:`losses`): each anchor is matched to the ground truth it overlaps most
    (foreground at IoU >= ``fg_iou_thresh``, background below ``bg_iou_thresh``, ignored
    between; every box also claims its best anchors). Per image, the focal loss over all classes
    of the non-ignored anchors and the box loss of the foreground anchors (``l1`` on the encoded
    deltas, or ``giou`` of the decoded boxes) are each divided by that image's foreground count;
    the batch's loss is the mean over its images.
    """

    def __init__(
        self,
        num_anchors: int,
        num_classes: int,
        channels: int = 256,
        conv_depth: int = 4,
        group_norm: bool = False,
        prior_probability: float = 0.01,
        box_loss: str = "l1",
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        if group_norm and channels % 32:
            raise ValueError(f"group_norm needs channels divisible by 32, got {channels}")
        self.num_anchors, self.num_classes = int(num_anchors), int(num_classes)
        self.channels, self.conv_depth = int(channels), int(conv_depth)
        self.group_norm, self.prior_probability = bool(group_norm), float(prior_probability)
        self.box_loss = box_loss
        self.fg_iou_thresh, self.bg_iou_thresh = float(fg_iou_thresh), float(bg_iou_thresh)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(self.fg_iou_thresh, self.bg_iou_thresh, True)

    def build(self, input_shape=None):
        depth, channels, norm = self.conv_depth, self.channels, self.group_norm
        self.cls_convs, self.cls_norms = conv_tower("cls", depth, channels, norm)
        self.box_convs, self.box_norms = conv_tower("box", depth, channels, norm)
        prior = -math.log((1.0 - self.prior_probability) / self.prior_probability)
        self.cls_logits = predictor(
            "cls_logits", self.num_anchors * self.num_classes, channels, prior
        )
        self.bbox_reg = predictor("bbox_reg", self.num_anchors * 4, channels)
        self.built = True

    def call(self, features):
        """``features``: list of [B, H_l, W_l, channels]. Returns (class logits [B, N_l, C],
        box deltas [B, N_l, 4]) per level, N_l = H_l * W_l * num_anchors."""
        logits, deltas = [], []
        for x in features:
            cls = self.cls_logits(run_tower(self.cls_convs, self.cls_norms, x))
            box = self.bbox_reg(run_tower(self.box_convs, self.box_norms, x))
            logits.append(per_location(cls, self.num_classes))
            deltas.append(per_location(box, 4))
        return logits, deltas

    def predictions(self, outputs, anchors):
        """Per level: sigmoid scores [B, N_l, C] and the boxes decoded from each anchor of
        ``anchors`` (a list per level of [N_l, 4])."""
        logits, deltas = outputs
        scores = [ops.sigmoid(ops.cast(x, "float32")) for x in logits]
        boxes = [
            self.box_coder.decode(ops.cast(d, "float32"), a[None])
            for d, a in zip(deltas, anchors, strict=True)
        ]
        return scores, boxes

    def losses(self, outputs, anchors, gt_boxes, gt_labels):
        """(classification loss, box loss) of the outputs (class logits and deltas per level)
        of ``anchors`` (a list per level of [N_l, 4]) against padded ground truth (labels -1 =
        padding)."""
        logits, deltas = (ops.cast(ops.concatenate(x, axis=1), "float32") for x in outputs)
        anchors = ops.concatenate(anchors, axis=0)
        gt_valid = gt_labels >= 0
        matches = self.matcher(pairwise_iou(anchors[None], gt_boxes), gt_valid)
        foreground = matches >= 0
        count = ops.maximum(ops.sum(ops.cast(foreground, "float32"), axis=1), 1.0)
        index = ops.maximum(matches, 0)
        labels = ops.take_along_axis(ops.maximum(gt_labels, 0), index, axis=1)
        targets = ops.one_hot(labels, self.num_classes) * ops.cast(foreground, "float32")[..., None]
        focal = sigmoid_focal_loss(logits, targets, self.focal_alpha, self.focal_gamma)
        counted = ops.cast(matches != BETWEEN_THRESHOLDS, "float32")
        cls_loss = ops.sum(ops.sum(focal, axis=-1) * counted, axis=1) / count
        matched = ops.take_along_axis(gt_boxes, index[..., None], axis=1)
        # Other anchors' deltas are zeroed first: decoding wild ones must not reach the sum.
        deltas = ops.where(foreground[..., None], deltas, 0.0)
        box = self.box_terms(deltas, anchors[None], matched)
        box_loss = ops.sum(ops.where(foreground, box, 0.0), axis=1) / count
        return ops.mean(cls_loss), ops.mean(box_loss)

    def box_terms(self, deltas, anchors, matched):
        """Per-anchor box loss [B, N] of ``deltas`` against the matched boxes."""
        if self.box_loss == "giou":
            return giou_loss(self.box_coder.decode(deltas, anchors), matched)
        return ops.sum(ops.abs(deltas - self.box_coder.encode(matched, anchors)), axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "num_anchors": self.num_anchors,
            "num_classes": self.num_classes,
            "channels": self.channels,
            "conv_depth": self.conv_depth,
            "group_norm": self.group_norm,
            "prior_probability": self.prior_probability,
            "box_loss": self.box_loss,
            "fg_iou_thresh": self.fg_iou_thresh,
            "bg_iou_thresh": self.bg_iou_thresh,
            "focal_alpha": self.focal_alpha,
            "focal_gamma": self.focal_gamma,
        }
