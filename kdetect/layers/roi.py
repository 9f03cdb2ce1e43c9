"""The RoI stage: sampling proposals for training, RoIAlign, the box head and the predictor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

from kdetect.boxes import BoxCoder, box_area, pairwise_iou
from kdetect.matching import BalancedPositiveNegativeSampler, Matcher


class RoISampler:
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

    def __init__(
        self,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        box_coder: BoxCoder | None = None,
    ):
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.batch_size_per_image = int(batch_size_per_image)
        self.box_coder = box_coder or BoxCoder((10.0, 10.0, 5.0, 5.0))

    def __call__(self, proposals, proposals_valid, gt_boxes, gt_labels, seed=None):
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


class MultiLevelRoIAlign:
    """RoIAlign (He et al., 2017) over one or several feature maps.

    Each RoI is pooled from one level: with a single map (C4 models) that map; with a pyramid the
    level ``floor(canonical_level + log2(sqrt(area) / canonical_size))`` clamped to the available
    levels, as in the FPN paper. The RoI, scaled by the level's ``1 / stride``, is split into
    ``output_size`` x ``output_size`` bins; in each bin ``sampling_ratio`` x ``sampling_ratio``
    points are read by bilinear interpolation and averaged. Coordinates follow Detectron2's
    ``aligned=True`` convention: a pixel's centre is at ``i + 0.5``, so sample positions are
    shifted by -0.5 before interpolating. Points more than one pixel outside the map read 0.

    Implemented with gathers on the flattened, concatenated levels so that every RoI costs the
    same whatever its level, shapes stay static, and gradients flow to the features.

    Args:
        strides: stride of each feature map (finest first).
        output_size: bins per side.
        sampling_ratio: samples per bin side.
        canonical_size, canonical_level: FPN's level-assignment constants (224, 4).
        min_level: pyramid level number of the first map (2 for P2); unused with one map.
    """

    def __init__(
        self,
        strides: Sequence[int],
        output_size: int = 7,
        sampling_ratio: int = 2,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
        min_level: int = 2,
    ):
        self.strides = [int(s) for s in strides]
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_size = float(canonical_size)
        self.canonical_level = int(canonical_level)
        self.min_level = int(min_level)

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

    def __call__(self, features, boxes):
        """``features``: list of [B, H_l, W_l, C]; ``boxes`` [B, R, 4] image pixels.

        Returns [B, R, output_size, output_size, C].
        """
        boxes = ops.cast(ops.stop_gradient(boxes), "float32")
        batch = ops.shape(boxes)[0]
        num_rois = boxes.shape[1]
        channels = features[0].shape[-1]
        heights = [f.shape[1] for f in features]
        widths = [f.shape[2] for f in features]
        offsets, total = [], 0
        for h, w in zip(heights, widths):
            offsets.append(total)
            total += h * w
        # One row per (image, position) so that a plain ``take`` on axis 0 reads any sample.
        flat = ops.concatenate([ops.reshape(f, (batch, -1, channels)) for f in features], axis=1)
        flat = ops.reshape(flat, (-1, channels))
        image_offset = ops.arange(batch, dtype="int32")[:, None, None, None] * total

        level = self.assign_levels(boxes)
        pick = lambda values: ops.take(ops.convert_to_tensor(values, "float32"), level)  # noqa: E731
        scale = pick([1.0 / s for s in self.strides])
        height = pick(heights)
        width = pick(widths)
        offset = ops.take(ops.convert_to_tensor(offsets, "int32"), level)

        x1, y1, x2, y2 = ops.unstack(boxes * ops.expand_dims(scale, -1), 4, axis=-1)
        n, sr = self.output_size, self.sampling_ratio
        ys = self._axis_samples(y1 - 0.5, (y2 - y1) / n, height, n, sr)
        xs = self._axis_samples(x1 - 0.5, (x2 - x1) / n, width, n, sr)
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
        pooled = ops.reshape(pooled, (batch, num_rois, n, sr, n, sr, channels))
        return ops.mean(pooled, axis=(3, 5))


@keras.saving.register_keras_serializable(package="kdetect")
class MLPBoxHead(keras.layers.Layer):
    """FPN's box head: flatten the pooled RoI, then two fully connected layers with ReLU."""

    def __init__(self, units: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.fc1 = keras.layers.Dense(units, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(units, activation="relu", name="fc2")

    def build(self, input_shape):
        # input_shape: [B, R, S, S, C]
        flat = tuple(input_shape[:2]) + (math.prod(input_shape[2:]),)
        self.fc1.build(flat)
        self.fc2.build(tuple(input_shape[:2]) + (self.units,))

    def call(self, pooled):
        shape = ops.shape(pooled)
        x = ops.reshape(pooled, (shape[0], shape[1], -1))
        return self.fc2(self.fc1(x))

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units})
        return config


@keras.saving.register_keras_serializable(package="kdetect")
class BoxPredictor(keras.layers.Layer):
    """Class logits (``num_classes + 1``, background first) and class-specific box deltas
    (``num_classes * 4``) from the box head's features."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.cls_score = keras.layers.Dense(
            num_classes + 1,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="cls_score",
        )
        self.bbox_pred = keras.layers.Dense(
            num_classes * 4,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="bbox_pred",
        )

    def build(self, input_shape):
        self.cls_score.build(input_shape)
        self.bbox_pred.build(input_shape)

    def call(self, x):
        logits = self.cls_score(x)
        deltas = self.bbox_pred(x)
        shape = ops.shape(deltas)
        return logits, ops.reshape(deltas, (shape[0], shape[1], self.num_classes, 4))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes})
        return config
