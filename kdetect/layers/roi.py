"""The RoI stage: sampling proposals for training, and RoIAlign (the box head and predictor
that follow are in :mod:`kdetect.layers.box_head`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

from kdetect.layers.base import MatchAndSample, PipelineLayer
from kdetect.ops.boxes import box_area, pairwise_iou
from kdetect.ops.tf_ops import crop_and_resize_roi_align


@keras.saving.register_keras_serializable(package="kdetect")
class RoISampler(MatchAndSample):
    """Chooses the RoIs the box head trains on, and their targets.

    The ground-truth boxes are appended to the proposals (so every object has at least one
    perfect RoI), each candidate is matched to the ground truth it overlaps most: IoU >=
    ``fg_iou_thresh`` makes it foreground of that object's class, IoU < ``bg_iou_thresh``
    background. ``batch_size_per_image`` candidates are sampled with at most
    ``positive_fraction`` foreground. The output always has exactly ``batch_size_per_image`` rows
    per image; rows beyond what could be sampled get weight 0.

    Returns a dict with ``rois`` [B, S, 4], ``labels`` int32 [B, S] (0 = background, c + 1 = class
    c), ``box_targets`` [B, S, 4] (deltas encoded by ``box_coder``) and ``weights`` float [B, S]
    (1 for sampled rows).
    """

    DEFAULT_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)

    DEFAULTS = {
        "fg_iou_thresh": 0.5,
        "bg_iou_thresh": 0.5,
        "batch_size_per_image": 512,
        "positive_fraction": 0.25,
    }

    def call(self, proposals, proposals_valid, gt_boxes, gt_labels, seed=None):
        gt_valid = gt_labels >= 0
        candidates = ops.concatenate([proposals, ops.cast(gt_boxes, proposals.dtype)], axis=1)
        candidates_valid = ops.concatenate([proposals_valid, gt_valid], axis=1)
        num_candidates = candidates.shape[1]
        shortfall = self.batch_size_per_image - (num_candidates or self.batch_size_per_image)
        if shortfall > 0:
            # Fewer candidates than output rows: pad with invalid ones (never sampled, weight 0)
            # so that ``top_k`` below can still return exactly ``batch_size_per_image`` rows.
            batch = ops.shape(candidates)[0]
            candidates = ops.concatenate(
                [candidates, ops.zeros((batch, shortfall, 4), candidates.dtype)], axis=1
            )
            candidates_valid = ops.concatenate(
                [candidates_valid, ops.zeros((batch, shortfall), "bool")], axis=1
            )
        iou = pairwise_iou(candidates, gt_boxes)
        matches = self.matcher(iou, gt_valid)
        positive = (matches >= 0) & candidates_valid
        negative = (matches == -1) & candidates_valid
        sampled_pos, sampled_neg = self.sampler(positive, negative, seed=seed)
        # Exactly S rows per image: sampled positives first, then sampled negatives, then filler.
        priority = ops.cast(sampled_pos, "float32") * 2.0 + ops.cast(sampled_neg, "float32")
        _, order = ops.top_k(priority, self.batch_size_per_image)
        take = lambda x: ops.take_along_axis(x, order, axis=1)  # noqa: E731
        rois = ops.take_along_axis(candidates, ops.expand_dims(order, -1), axis=1)
        row_matches = ops.maximum(take(matches), 0)
        is_pos = take(sampled_pos)
        weights = ops.cast(is_pos | take(sampled_neg), "float32")
        matched_labels = ops.take_along_axis(gt_labels, row_matches, axis=1)
        labels = ops.where(is_pos, matched_labels + 1, 0)
        matched_boxes = ops.take_along_axis(
            ops.cast(gt_boxes, rois.dtype), ops.expand_dims(row_matches, -1), axis=1
        )
        box_targets = self.box_coder.encode(matched_boxes, rois)
        return {
            "rois": ops.stop_gradient(rois),
            "labels": ops.cast(labels, "int32"),
            "box_targets": ops.stop_gradient(box_targets),
            "weights": weights,
        }


@keras.saving.register_keras_serializable(package="kdetect")
class MultiLevelRoIAlign(PipelineLayer):
    """RoIAlign (He et al., 2017) over one or several feature maps.

    Each RoI is pooled from one level: with a single map (C4 models) that map; with a pyramid the
    level ``floor(canonical_level + log2(sqrt(area) / canonical_size))`` clamped to the available
    levels, as in the FPN paper. The RoI, scaled by the level's ``1 / stride``, is split into
    ``output_size`` x ``output_size`` bins; in each bin ``sampling_ratio`` x ``sampling_ratio``
    points are read by bilinear interpolation and averaged. With ``aligned=True`` (Detectron2's
    convention, kdetect's default) a pixel's centre is at ``i + 0.5``, so sample positions are
    shifted by -0.5 before interpolating. ``aligned=False`` is the original RoIAlign that
    torchvision's Faster R-CNN uses (``MultiScaleRoIAlign``): no shift, and a scaled RoI is at
    least one feature pixel wide and high. Points more than one pixel outside the map read 0.
    Feature maps may have sizes known only when the graph runs.

    Two implementations compute the same values (both are tested against a NumPy reference):

    * ``gather``: portable ``keras.ops`` gathers on the flattened, concatenated levels; every RoI
      costs the same whatever its level, shapes stay static and XLA can compile it.
    * ``crop_and_resize``: TensorFlow's fused ``tf.image.crop_and_resize`` kernel (and its
      gradient kernel) on the levels stacked into one image, each level padded by one
      edge-replicated pixel (samples in [-1, 0) and (H - 1, H] read the edge, as RoIAlign's clamp
      does) and zeros beyond, with a validity mask for samples outside [-1, H]; then an
      ``sr`` x ``sr`` average pool. 2-4x faster on CPU, but it has no XLA kernel.

    ``method="auto"`` (the default) picks ``crop_and_resize`` on the TensorFlow backend and
    ``gather`` elsewhere; the detector asks for ``gather`` when its step is XLA-compiled.

    Args:
        strides: stride of each feature map (finest first).
        output_size: bins per side.
        sampling_ratio: samples per bin side.
        canonical_size, canonical_level: FPN's level-assignment constants (224, 4).
        min_level: pyramid level number of the first map (2 for P2); unused with one map.
        method: ``auto``, ``gather`` or ``crop_and_resize``.
        aligned: half-pixel-offset RoIAlign (True) or torchvision's original one (False).
    """

    METHODS = ("auto", "gather", "crop_and_resize")

    def __init__(
        self,
        strides: Sequence[int],
        output_size: int = 7,
        sampling_ratio: int = 2,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
        min_level: int = 2,
        method: str = "auto",
        aligned: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        self.method = method
        self.strides = tuple(int(s) for s in strides)
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_size = float(canonical_size)
        self.canonical_level = int(canonical_level)
        self.min_level = int(min_level)
        self.aligned = bool(aligned)

    def _roi_grid(self, boxes, scale):
        """Start and bin size of each scaled RoI along y and x: ``(y0, bin_h, x0, bin_w)``."""
        x1, y1, x2, y2 = ops.unstack(boxes * ops.expand_dims(scale, -1), 4, axis=-1)
        n = self.output_size
        if self.aligned:
            return y1 - 0.5, (y2 - y1) / n, x1 - 0.5, (x2 - x1) / n
        return y1, ops.maximum(y2 - y1, 1.0) / n, x1, ops.maximum(x2 - x1, 1.0) / n

    def assign_levels(self, boxes):
        """Index (0-based, into ``strides``) of the level each box is pooled from: [B, R] int32."""
        if len(self.strides) == 1:
            return ops.zeros(ops.shape(boxes)[:-1], dtype="int32")
        scale = ops.sqrt(ops.maximum(box_area(boxes), 1e-12))
        level = ops.floor(
            self.canonical_level + ops.log(scale / self.canonical_size) / math.log(2.0) + 1e-6
        )
        level = ops.clip(level, self.min_level, self.min_level + len(self.strides) - 1)
        return ops.cast(level, "int32") - self.min_level

    @staticmethod
    def _axis_samples(start, bin_size, limit, count, sampling_ratio):
        """Sample coordinates along one axis and their bilinear corners and weights."""
        steps = (ops.arange(count * sampling_ratio, dtype="float32") + 0.5) / sampling_ratio
        pos = ops.expand_dims(start, -1) + ops.expand_dims(bin_size, -1) * steps  # [B, R, S]
        limit = ops.expand_dims(limit, -1)
        inside = (pos >= -1.0) & (pos <= limit)
        pos = ops.maximum(pos, 0.0)
        low = ops.floor(pos)
        at_edge = low >= limit - 1.0
        low = ops.where(at_edge, limit - 1.0, low)
        high = ops.where(at_edge, low, low + 1.0)
        pos = ops.where(at_edge, low, pos)
        frac = pos - low
        w_low = ops.where(inside, 1.0 - frac, 0.0)
        w_high = ops.where(inside, frac, 0.0)
        return ops.cast(low, "int32"), ops.cast(high, "int32"), w_low, w_high

    def resolve_method(self, method: str | None = None) -> str:
        """The implementation ``method`` (default: this layer's) stands for."""
        method = method or self.method
        if method == "auto":
            method = "crop_and_resize" if keras.backend.backend() == "tensorflow" else "gather"
        return method

    def call(self, features, boxes, method: str | None = None):
        """``features``: list of [B, H_l, W_l, C]; ``boxes`` [B, R, 4] image pixels.

        ``method`` overrides the layer's implementation for this call (``gather`` inside XLA).
        Returns [B, R, output_size, output_size, C].
        """
        if self.resolve_method(method) == "crop_and_resize":
            return self._crop_and_resize(features, boxes)
        return self._gather(features, boxes)

    def _crop_and_resize(self, features, boxes):
        boxes = ops.cast(ops.stop_gradient(boxes), "float32")
        return crop_and_resize_roi_align(
            features,
            boxes,
            self.assign_levels(boxes),
            self.strides,
            self._roi_grid,
            self.output_size,
            self.sampling_ratio,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "strides": list(self.strides),
            "output_size": self.output_size,
            "sampling_ratio": self.sampling_ratio,
            "canonical_size": self.canonical_size,
            "canonical_level": self.canonical_level,
            "min_level": self.min_level,
            "method": self.method,
            "aligned": self.aligned,
        }

    def _gather(self, features, boxes):
        boxes = ops.cast(ops.stop_gradient(boxes), "float32")
        batch = ops.shape(boxes)[0]
        num_rois = boxes.shape[1]
        channels = features[0].shape[-1]
        heights = [ops.shape(f)[1] for f in features]
        widths = [ops.shape(f)[2] for f in features]
        offsets, total = [], 0
        for h, w in zip(heights, widths):
            offsets.append(total)
            total = total + h * w
        # One row per (image, position) so that a plain ``take`` on axis 0 reads any sample.
        flat = ops.concatenate([ops.reshape(f, (batch, -1, channels)) for f in features], axis=1)
        flat = ops.reshape(flat, (-1, channels))
        image_offset = ops.arange(batch, dtype="int32")[:, None, None, None] * total

        level = self.assign_levels(boxes)
        stacked = lambda values, dtype: ops.cast(ops.stack(values), dtype)  # noqa: E731
        scale = ops.take(stacked([1.0 / s for s in self.strides], "float32"), level)
        height = ops.take(stacked(heights, "float32"), level)
        width = ops.take(stacked(widths, "float32"), level)
        offset = ops.take(stacked(offsets, "int32"), level)

        n, sr = self.output_size, self.sampling_ratio
        y0, bin_h, x0, bin_w = self._roi_grid(boxes, scale)
        ys = self._axis_samples(y0, bin_h, height, n, sr)
        xs = self._axis_samples(x0, bin_w, width, n, sr)
        row_width = ops.cast(width, "int32")

        pooled = 0.0
        for y_idx, y_w in ((ys[0], ys[2]), (ys[1], ys[3])):
            for x_idx, x_w in ((xs[0], xs[2]), (xs[1], xs[3])):
                index = (
                    image_offset
                    + ops.expand_dims(offset, -1)[..., None]
                    + ops.expand_dims(y_idx * ops.expand_dims(row_width, -1), -1)
                    + ops.expand_dims(x_idx, -2)
                )  # [B, R, S, S]
                weight = ops.expand_dims(y_w, -1) * ops.expand_dims(x_w, -2)
                values = ops.take(flat, index, axis=0)  # [B, R, S, S, C]
                pooled = pooled + values * ops.cast(ops.expand_dims(weight, -1), values.dtype)
        # Average the sr x sr samples of each bin, one axis at a time on rank-3 tensors (a
        # rank-7 reduction does not prepare in TFLite's XNNPACK delegate).
        pooled = ops.mean(ops.reshape(pooled, (-1, sr, n * sr * channels)), axis=1)
        pooled = ops.mean(ops.reshape(pooled, (-1, sr, channels)), axis=1)
        return ops.reshape(pooled, (batch, num_rois, n, n, channels))
