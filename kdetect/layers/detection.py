"""Turning the box head's outputs into final detections."""

from __future__ import annotations

import keras
from keras import ops

from kdetect.layers.base import PipelineLayer
from kdetect.ops.boxes import BoxCoder, clip_boxes
from kdetect.ops.tf_ops import multiclass_nms


@keras.saving.register_keras_serializable(package="kdetect")
class DetectionDecoder(PipelineLayer):
    """Final detections from class logits and class-specific deltas of each proposal.

    Softmax over classes; every proposal is decoded once per foreground class and clipped to the
    image; candidates below ``score_thresh`` or smaller than ``min_size`` are dropped;
    non-maximum suppression at ``nms_thresh`` runs within each class; the
    ``detections_per_img`` best detections over all classes are kept.

    Returns a dict of padded tensors: ``boxes`` [B, K, 4] ``xyxy``, ``confidence`` [B, K],
    ``labels`` int32 [B, K] (0-based class ids, -1 for padding rows), ``num_detections`` [B].

    ``nms_thresh`` and ``class_agnostic`` (suppression across classes) may be changed before a
    prediction (:meth:`~kdetect.models.base.DetectionModel.configure_detections`).
    """

    FINAL_NMS = True  # the detector's last suppression (not the RPN's)

    def __init__(
        self,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        min_size: float = 1e-2,
        box_coder: BoxCoder | dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.class_agnostic = False
        self.detections_per_img = int(detections_per_img)
        self.min_size = float(min_size)
        self.box_coder = BoxCoder.from_value(box_coder, (10.0, 10.0, 5.0, 5.0))

    def call(self, class_logits, box_deltas, proposals, proposals_valid, image_size):
        height, width = image_size
        class_logits = ops.cast(class_logits, "float32")
        box_deltas = ops.cast(box_deltas, "float32")
        num_classes = box_deltas.shape[2]
        scores = ops.softmax(class_logits, axis=-1)[..., 1:]  # [B, R, C]
        reference = ops.repeat(ops.expand_dims(proposals, 2), num_classes, axis=2)
        boxes = clip_boxes(self.box_coder.decode(box_deltas, reference), height, width)
        x1, y1, x2, y2 = ops.unstack(boxes, 4, axis=-1)
        keep = ((x2 - x1) >= self.min_size) & ((y2 - y1) >= self.min_size)
        keep = keep & ops.expand_dims(proposals_valid, -1)
        scores = ops.where(keep, scores, 0.0)
        boxes, confidence, labels, num = multiclass_nms(
            boxes,
            scores,
            self.detections_per_img,
            self.nms_thresh,
            self.score_thresh,
            self.class_agnostic,
        )
        valid = ops.arange(self.detections_per_img)[None, :] < ops.expand_dims(num, -1)
        return {
            "boxes": boxes,
            "confidence": confidence,
            "labels": ops.where(valid, labels, -1),
            "num_detections": num,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "score_thresh": self.score_thresh,
            "nms_thresh": self.nms_thresh,
            "detections_per_img": self.detections_per_img,
            "min_size": self.min_size,
            "box_coder": self.box_coder.get_config(),
        }
