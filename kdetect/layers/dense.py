"""Final detections of dense single-stage heads (RetinaNet, FCOS): per-level top-k, then NMS."""

from __future__ import annotations

import math

import keras
from keras import ops

from kdetect.layers.base import PipelineLayer
from kdetect.ops.boxes import clip_boxes
from kdetect.ops.tf_ops import nms_padded


@keras.saving.register_keras_serializable(package="kdetect")
class DenseDetectionDecoder(PipelineLayer):
    """Detections from per-level class scores and decoded boxes of every anchor (location).

    For each pyramid level the (anchor, class) pairs scoring above ``score_thresh`` are ranked
    and the best ``topk_candidates`` kept; their boxes are clipped to the image. The candidates
    of all levels then go through non-maximum suppression at ``nms_thresh`` within each class
    (one pass over class-shifted boxes: each class is moved to its own cell of a grid wider than
    the boxes' span, so boxes of different classes never overlap), which keeps the best
    ``detections_per_img``.

    Call with ``scores``: a list of float [B, N_l, C] per level (probabilities), ``boxes``: a
    list of float [B, N_l, 4] ``xyxy`` per level, and ``image_size`` (height, width). Returns
    the predict contract: ``boxes`` [B, K, 4], ``confidence`` [B, K], ``labels`` int32 [B, K]
    (-1 for padding rows) and ``num_detections`` int32 [B].

    ``nms_thresh`` and ``class_agnostic`` (suppression across classes) may be changed before a
    prediction (:meth:`~kdetect.models.base.DetectionModel.configure_detections`).
    """

    FINAL_NMS = True

    def __init__(
        self,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 300,
        topk_candidates: int = 1000,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.class_agnostic = False
        self.detections_per_img = int(detections_per_img)
        self.topk_candidates = int(topk_candidates)

    def _level_candidates(self, scores, boxes, height, width):
        """The level's best (score, box, label) triples above the threshold, [B, k] each."""
        num_classes = scores.shape[-1]
        batch, count = ops.shape(scores)[0], scores.shape[1]
        flat = ops.reshape(scores, (batch, -1))
        flat = ops.where(flat > self.score_thresh, flat, -1.0)
        k = self.topk_candidates
        if count is not None and count * num_classes < k:
            k = count * num_classes
        elif count is None:  # a frame known at run time: pad so that k entries always exist
            flat = ops.concatenate([flat, ops.full((batch, k), -1.0)], axis=1)
        top, index = ops.top_k(flat, k)
        anchor = ops.minimum(index // num_classes, ops.shape(boxes)[1] - 1)
        label = index % num_classes
        picked = ops.take_along_axis(boxes, ops.expand_dims(anchor, -1), axis=1)
        return top, clip_boxes(picked, height, width), ops.cast(label, "int32")

    def call(self, scores, boxes, image_size):
        height, width = image_size
        num_classes = scores[0].shape[-1]
        parts = [
            self._level_candidates(ops.cast(s, "float32"), ops.cast(b, "float32"), height, width)
            for s, b in zip(scores, boxes, strict=True)
        ]
        top, candidates, labels = (ops.concatenate(p, axis=1) for p in zip(*parts))
        valid = top > self.score_thresh
        candidates = ops.where(ops.expand_dims(valid, -1), candidates, 0.0)
        side = int(math.ceil(math.sqrt(num_classes)))
        cell = ops.max(candidates) - ops.minimum(ops.min(candidates), 0.0) + 1.0
        corner = ops.cast(ops.stack([labels % side, labels // side], axis=-1), "float32") * cell
        shifted = candidates
        if not self.class_agnostic:
            shifted = candidates + ops.concatenate([corner, corner], axis=-1)
        k = self.detections_per_img
        index, num = nms_padded(shifted, top, k, self.nms_thresh, self.score_thresh)
        kept = ops.arange(k)[None, :] < ops.expand_dims(num, -1)
        out_boxes = ops.take_along_axis(candidates, ops.expand_dims(index, -1), axis=1)
        return {
            "boxes": ops.where(ops.expand_dims(kept, -1), out_boxes, 0.0),
            "confidence": ops.where(kept, ops.take_along_axis(top, index, axis=1), 0.0),
            "labels": ops.where(kept, ops.take_along_axis(labels, index, axis=1), -1),
            "num_detections": num,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "score_thresh": self.score_thresh,
            "nms_thresh": self.nms_thresh,
            "detections_per_img": self.detections_per_img,
            "topk_candidates": self.topk_candidates,
        }
