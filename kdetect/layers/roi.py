"""The RoI stage: sampling proposals for training, RoIAlign, the box head and the predictor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

from kdetect.boxes import BoxCoder, box_area, pairwise_iou
from kdetect.layers.base import MatchAndSample, PipelineLayer
from kdetect.layers.batch_norm import BatchNormalization


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

    def __init__(
        self,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        box_coder: BoxCoder | dict | None = None,
        **kwargs,
    ):
        super().__init__(
            fg_iou_thresh,
            bg_iou_thresh,
            batch_size_per_image,
            positive_fraction,
            box_coder,
            **kwargs,
        )

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
        import tensorflow as tf

        boxes = tf.cast(tf.stop_gradient(boxes), tf.float32)
        batch = tf.shape(boxes)[0]
        num_rois = boxes.shape[1]
        features = [tf.convert_to_tensor(f) for f in features]
        dtype = features[0].dtype
        channels = features[0].shape[-1]
        heights = [tf.shape(f)[1] for f in features]
        widths = [tf.shape(f)[2] for f in features]
        padded_width = tf.reduce_max(tf.stack(widths)) + 2
        # Stack the levels vertically in one image per batch element: each level gets a
        # one-pixel edge-replicated border (RoIAlign's clamp for samples in [-1, 0) and
        # (H - 1, H]) and zeros on the right up to the widest level. Stacking vertically rather
        # than as [B * L, Hmax, Wmax, C] keeps the copy at ~1.4x the finest level, not 4x.
        blocks, row_offsets, total = [], [], 0
        for f, w in zip(features, widths):
            if dtype not in (tf.float16, tf.float32, tf.float64):
                f = tf.cast(f, tf.float32)  # no bfloat16 gradient kernel
            f = tf.concat([f[:, :1], f, f[:, -1:]], axis=1)
            f = tf.concat([f[:, :, :1], f, f[:, :, -1:]], axis=2)
            f = tf.pad(f, [[0, 0], [0, 0], [0, padded_width - w - 2], [0, 0]])
            blocks.append(f)
            row_offsets.append(total + 1)  # stacked row of the level's row 0
            total = total + tf.shape(f)[1]
        image = tf.concat(blocks, axis=1) if len(blocks) > 1 else blocks[0]

        level = self.assign_levels(boxes)
        pick = lambda values: tf.gather(tf.cast(tf.stack(values), tf.float32), level)  # noqa: E731
        scale = pick([1.0 / s for s in self.strides])
        height = pick(heights)
        width = pick(widths)
        row_offset = pick(row_offsets)
        total = tf.cast(total, tf.float32)
        padded_width = tf.cast(padded_width, tf.float32)

        n, sr = self.output_size, self.sampling_ratio
        count = n * sr
        steps = (tf.range(count, dtype=tf.float32) + 0.5) / sr

        def axis(start, bin_size, limit, offset, extent):
            pos = start[..., None] + bin_size[..., None] * steps  # [B, R, count]
            valid = (pos >= -1.0) & (pos <= limit[..., None])
            first = (start + bin_size * steps[0] + offset) / (extent - 1.0)
            last = (start + bin_size * steps[-1] + offset) / (extent - 1.0)
            return valid, first, last

        y0, bin_h, x0, bin_w = self._roi_grid(boxes, scale)
        y_valid, ny1, ny2 = axis(y0, bin_h, height, row_offset, total)
        x_valid, nx1, nx2 = axis(x0, bin_w, width, 1.0, padded_width)
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
class ConvFCBoxHead(keras.layers.Layer):
    """A box head of 3x3 convs, then fully connected layers (torchvision's ``FastRCNNConvFCHead``
    of ``fasterrcnn_resnet50_fpn_v2``): each conv is followed by batch norm and ReLU and runs on
    every pooled RoI; the result is flattened and goes through the FC layers with ReLU.

    Args:
        conv_channels: width of each conv layer.
        units: width of each fully connected layer.
        batch_norm_epsilon: epsilon of the batch norms (torch's default 1e-5).
    """

    def __init__(
        self,
        conv_channels=(256, 256, 256, 256),
        units=(1024,),
        batch_norm_epsilon: float = 1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.conv_channels = tuple(int(c) for c in conv_channels)
        self.units = tuple(int(u) for u in units)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.convs = [
            keras.layers.Conv2D(c, 3, padding="same", use_bias=False, name=f"conv_{i}")
            for i, c in enumerate(self.conv_channels)
        ]
        self.norms = [
            BatchNormalization(epsilon=self.batch_norm_epsilon, name=f"conv_{i}_bn")
            for i in range(len(self.conv_channels))
        ]
        self.fcs = [
            keras.layers.Dense(u, activation="relu", name=f"fc_{i}")
            for i, u in enumerate(self.units)
        ]

    @property
    def output_units(self) -> int:
        return self.units[-1]

    def build(self, input_shape):
        # input_shape: [B, R, S, S, C]
        shape = (None,) + tuple(input_shape[2:])
        for conv, norm in zip(self.convs, self.norms):
            conv.build(shape)
            shape = shape[:-1] + (conv.filters,)
            norm.build(shape)
        width = math.prod(shape[1:])
        for fc in self.fcs:
            fc.build((None, None, width))
            width = fc.units

    def call(self, pooled, training=False):
        shape = ops.shape(pooled)
        x = ops.reshape(pooled, (-1,) + tuple(pooled.shape[2:]))
        for conv, norm in zip(self.convs, self.norms):
            x = ops.relu(norm(conv(x), training=training))
        x = ops.reshape(x, (shape[0], shape[1], -1))
        for fc in self.fcs:
            x = fc(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "conv_channels": self.conv_channels,
                "units": self.units,
                "batch_norm_epsilon": self.batch_norm_epsilon,
            }
        )
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
