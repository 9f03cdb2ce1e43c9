"""Faster R-CNN (Ren et al., 2015) as a ``keras.Model``, with an optional feature pyramid."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kdetect import export as exporting
from kdetect.anchors import feature_map_anchors
from kdetect.backbones import build_backbone, preprocess_images, resnet_stage5_head
from kdetect.boxes import BoxCoder, clip_boxes
from kdetect.errors import InputShapeError
from kdetect.layers import (
    BoxPredictor,
    ConvFCBoxHead,
    DetectionDecoder,
    FeaturePyramid,
    MLPBoxHead,
    MultiLevelRoIAlign,
    ProposalGenerator,
    RoISampler,
    RPNHead,
    RPNTargetAssigner,
)
from kdetect.pretrained.torchvision import load_torchvision

LOSS_NAMES = ("loss", "rpn_cls_loss", "rpn_box_loss", "rcnn_cls_loss", "rcnn_box_loss")
RESIZE_MODES = ("fit", "min_max")
# Sides up to this many pixels get float64's exact ``min_max`` rounding in exported graphs.
_MIN_MAX_TABLE_SIZE = 16384
BOX_HEAD_TYPES = ("mlp", "conv_fc")


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside kdetect: warnings point at user code."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def check_images(images, where: str = "predict"):
    """Validate a batch of raw images given to ``predict`` before it reaches a traced function.

    ``images`` (an array, a tensor or ``{"images": array}``) must be ``[B, H, W, 3]`` with
    ``B, H, W >= 1``; otherwise :class:`~kdetect.errors.InputShapeError` (a ``ValueError``)
    names the expected and the received shape. A float batch whose largest value is at most 1.0
    gets one warning (pixels are expected in 0..255), pointing at the caller's line. Datasets,
    generators and symbolic tensors pass through unchanged. Returns ``images``.
    """
    data = images["images"] if isinstance(images, dict) and "images" in images else images
    if isinstance(data, (tf.Tensor, tf.Variable)) and not tf.executing_eagerly():
        return images
    if not isinstance(data, (np.ndarray, tf.Tensor, tf.Variable, list)):
        return images  # tf.data.Dataset, generators, PyDataset: checked by their own shapes
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise InputShapeError(
            f"{where}: expected images as one [B, H, W, 3] array; got a ragged list "
            "(give same-size images, or one call per size)"
        ) from None
    shape = tuple(array.shape)
    expected = "[batch, height, width, 3] images (uint8 or float pixels 0..255)"
    if array.ndim == 3 and shape[-1] in (1, 3, 4):
        hint = f"; add a batch axis (images[None]) for one {shape[0]}x{shape[1]} image"
        raise InputShapeError(f"{where}: expected {expected}, got shape {shape}{hint}")
    if array.ndim != 4:
        raise InputShapeError(f"{where}: expected {expected}, got shape {shape}")
    if shape[-1] != 3:
        hint = {1: " (grayscale: repeat it to 3 channels)", 4: " (RGBA: drop the alpha channel)"}
        raise InputShapeError(
            f"{where}: expected {expected}, got shape {shape}: {shape[-1]} channel(s)"
            f"{hint.get(shape[-1], '')}"
        )
    if 0 in shape[:3]:
        what = "an empty batch" if shape[0] == 0 else "a zero-size image"
        raise InputShapeError(f"{where}: expected {expected}, got shape {shape} ({what})")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputShapeError(f"{where}: expected numeric pixels, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and float(np.max(array)) <= 1.0:
        warnings.warn(
            f"{where}: float images with values at most 1.0; the detector expects pixels in "
            "0..255 (scale by 255), so it will likely find nothing",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )
    return images


def smooth_l1(diff, beta: float):
    """Huber-like loss used for box regression: quadratic below ``beta``, linear above."""
    diff = ops.abs(diff)
    return ops.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def _replica_mean(count):
    """``count`` averaged over the replicas of a ``tf.distribute`` strategy (itself without one).

    The losses are sums over sampled anchors/RoIs divided by the number sampled. Under a strategy
    each replica sees part of the batch; dividing by the replicas' mean count (and the loss by the
    replica count in ``train_step``) makes the summed gradients those of the global batch, even
    when images have different numbers of valid samples.
    """
    count = ops.stop_gradient(count)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return count
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, count)


@keras.saving.register_keras_serializable(package="kdetect")
class FasterRCNN(keras.Model):
    """Two-stage object detector: backbone (+ FPN) -> RPN -> RoIAlign -> box head -> decoder.

    Training batches are ``{"images": [B, H, W, 3], "bounding_boxes": {"boxes": [B, M, 4] xyxy
    pixels, "labels": [B, M] (-1 = padding)}}`` with images already resized and padded to
    ``image_size``; ``fit`` optimises the sum of four losses and reports each one. ``predict``
    takes raw images of any size, resizes them to fit ``image_size`` (keeping the aspect ratio,
    padded at the bottom/right) and returns boxes in the input images' pixels.

    Args:
        num_classes: number of object classes (background is added internally).
        backbone: ``resnet50``, ``resnet101``, ``vgg16``, ``mobilenet_v2`` or ``tiny``.
        fpn: use a feature pyramid (P2-P6) instead of the single stride-16 map (C4).
        image_size: ``(height, width)`` the network runs at; multiples of 32.
        backbone_weights: None (random init), ``"imagenet"`` or a local weights file.
        freeze: freeze the backbone up to this stage (``stem``, ``stage1``..``stage4``).
        frozen_batch_norm: keep the backbone's batch-norm statistics fixed; defaults to True
            when ``backbone_weights`` is given.
        anchor_sizes: one tuple of sizes (pixels) per RPN level; default
            ``((32,), (64,), (128,), (256,), (512,))`` with FPN, ``((32, 64, 128, 256, 512),)``
            without.
        aspect_ratios: anchor height/width ratios, shared by all levels.
        fpn_channels: width of the pyramid levels.
        rpn_*: region proposal network settings (torchvision's names and defaults).
        box_*: RoI head settings (torchvision's names and defaults); ``box_head_units`` is the
            width of the fully connected layers. ``box_head_type`` ``mlp`` is FPN's two-layer
            head; ``conv_fc`` is torchvision v2's four 256-channel conv + batch norm layers and
            one fully connected layer.
        fpn_batch_norm: batch norm after the pyramid's convs (torchvision v2).
        rpn_conv_depth: 3x3 convs of the RPN head (torchvision v2: 2).
        bbox_reg_weights: box coder weights of the RoI head.
        roi_align_aligned: half-pixel RoIAlign (Detectron2's ``aligned=True``); torchvision's
            detectors use False.
        resize_mode: ``fit`` or ``min_max`` (see above); ``min_size`` / ``max_size`` are the
            latter's sizes.
        batch_norm_epsilon: epsilon of the backbone's batch norm; None keeps the backbone's own.
        seed: seed of the training-time samplers.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        fpn: bool = True,
        image_size: Sequence[int] = (800, 800),
        backbone_weights: str | None = None,
        freeze: str | None = None,
        frozen_batch_norm: bool | None = None,
        anchor_sizes: Sequence[Sequence[float]] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        fpn_channels: int = 256,
        fpn_batch_norm: bool = False,
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_score_thresh: float = 0.0,
        rpn_conv_depth: int = 1,
        box_roi_pool_size: int = 7,
        box_sampling_ratio: int = 2,
        box_head_units: int = 1024,
        box_head_type: str = "mlp",
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        roi_align_aligned: bool = True,
        resize_mode: str = "fit",
        min_size: int = 800,
        max_size: int = 1333,
        batch_norm_epsilon: float | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise TypeError(f"num_classes must be an integer, got {num_classes!r}")
        if (
            isinstance(image_size, (str, bytes))
            or not isinstance(image_size, Sequence | np.ndarray)
            or len(image_size) != 2
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in image_size)
        ):
            raise TypeError(f"image_size must be (height, width), two integers; got {image_size!r}")
        image_size = tuple(int(s) for s in image_size)
        if any(s <= 0 or s % 32 for s in image_size):
            raise ValueError(
                f"image_size must be (height, width), multiples of 32; got {image_size}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        num_classes = int(num_classes)
        if box_head_type not in BOX_HEAD_TYPES:
            raise ValueError(
                f"box_head_type must be one of {BOX_HEAD_TYPES}, got {box_head_type!r}"
            )
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size} and {max_size}")
        if anchor_sizes is None:
            anchor_sizes = (
                ((32,), (64,), (128,), (256,), (512,)) if fpn else ((32, 64, 128, 256, 512),)
            )
        anchor_sizes = tuple(tuple(float(s) for s in level) for level in anchor_sizes)
        if frozen_batch_norm is None:
            frozen_batch_norm = backbone_weights is not None

        # --- Layers -------------------------------------------------------------------------
        features, full = build_backbone(
            backbone,
            image_size + (3,),
            backbone_weights,
            freeze,
            frozen_batch_norm,
            batch_norm_epsilon=batch_norm_epsilon,
        )
        c4_style_resnet = not fpn and backbone.startswith("resnet")
        if fpn:
            self.backbone = features
            # Strides of the maps the pyramid is built on: C2..C5 (4..32) for most backbones;
            # torchvision's MobileNetV3 detector uses two stride-32 maps.
            spec = features.compute_output_spec(keras.KerasTensor((1,) + image_size + (3,)))
            strides = tuple(image_size[0] // t.shape[1] for t in spec)
            self.fpn = FeaturePyramid(
                fpn_channels, batch_norm=fpn_batch_norm, input_strides=strides, name="fpn"
            )
            rpn_channels = fpn_channels
            rpn_levels = len(strides) + 1  # the pyramid and its subsampled top
            # RoIs are pooled from the first map of each stride (torchvision's level mapper
            # spans the distinct strides only).
            roi_strides = tuple(sorted(set(strides)))
            self._roi_levels = [strides.index(stride) for stride in roi_strides]
        elif len(features.outputs) < 4:
            raise ValueError(f"backbone '{backbone}' needs fpn=True")
        else:
            self.backbone = keras.Model(full.inputs, features.outputs[2], name=f"{backbone}_c4")
            self.fpn = None
            rpn_channels = features.output_shape[2][-1]
            rpn_levels = 1
            roi_strides = (16,)
        if len(anchor_sizes) != rpn_levels:
            raise ValueError(
                f"anchor_sizes needs {rpn_levels} tuples (one per RPN level), "
                f"got {len(anchor_sizes)}"
            )
        num_anchors = len(anchor_sizes[0]) * len(aspect_ratios)
        if any(len(level) != len(anchor_sizes[0]) for level in anchor_sizes):
            raise ValueError("every RPN level needs the same number of anchor sizes")
        self.rpn_head = RPNHead(
            num_anchors, rpn_channels, conv_depth=rpn_conv_depth, name="rpn_head"
        )
        roi_output_size = 2 * box_roi_pool_size if c4_style_resnet else box_roi_pool_size
        self.roi_align = MultiLevelRoIAlign(
            roi_strides, roi_output_size, box_sampling_ratio, aligned=roi_align_aligned
        )
        if c4_style_resnet:
            self.box_head = resnet_stage5_head(full, backbone)
        elif box_head_type == "conv_fc":
            self.box_head = ConvFCBoxHead(units=(box_head_units,), name="box_head")
        else:
            self.box_head = MLPBoxHead(box_head_units, name="box_head")
        self.box_predictor = BoxPredictor(num_classes, name="box_predictor")

        # --- Training and inference logic (no weights) --------------------------------------
        rpn_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        roi_coder = BoxCoder(bbox_reg_weights)
        self.rpn_targets = RPNTargetAssigner(
            rpn_fg_iou_thresh,
            rpn_bg_iou_thresh,
            rpn_batch_size_per_image,
            rpn_positive_fraction,
            rpn_coder,
        )
        self.train_proposals = ProposalGenerator(
            rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train,
            rpn_nms_thresh,
            score_thresh=rpn_score_thresh,
            box_coder=rpn_coder,
        )
        self.test_proposals = ProposalGenerator(
            rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test,
            rpn_nms_thresh,
            score_thresh=rpn_score_thresh,
            box_coder=rpn_coder,
        )
        self.roi_sampler = RoISampler(
            box_fg_iou_thresh,
            box_bg_iou_thresh,
            box_batch_size_per_image,
            box_positive_fraction,
            roi_coder,
        )
        self.decoder = DetectionDecoder(
            box_score_thresh, box_nms_thresh, box_detections_per_img, box_coder=roi_coder
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}

        # --- Config -------------------------------------------------------------------------
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.use_fpn = fpn
        self.image_size = image_size
        self.backbone_weights = backbone_weights
        self.freeze = freeze
        self.frozen_batch_norm = frozen_batch_norm
        self.anchor_sizes = anchor_sizes
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.fpn_channels = fpn_channels
        self.fpn_batch_norm = bool(fpn_batch_norm)
        self.resize_mode = resize_mode
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self._config = {
            "rpn_pre_nms_top_n_train": rpn_pre_nms_top_n_train,
            "rpn_pre_nms_top_n_test": rpn_pre_nms_top_n_test,
            "rpn_post_nms_top_n_train": rpn_post_nms_top_n_train,
            "rpn_post_nms_top_n_test": rpn_post_nms_top_n_test,
            "rpn_nms_thresh": rpn_nms_thresh,
            "rpn_fg_iou_thresh": rpn_fg_iou_thresh,
            "rpn_bg_iou_thresh": rpn_bg_iou_thresh,
            "rpn_batch_size_per_image": rpn_batch_size_per_image,
            "rpn_positive_fraction": rpn_positive_fraction,
            "rpn_score_thresh": rpn_score_thresh,
            "rpn_conv_depth": int(rpn_conv_depth),
            "box_roi_pool_size": box_roi_pool_size,
            "box_sampling_ratio": box_sampling_ratio,
            "box_head_units": box_head_units,
            "box_head_type": box_head_type,
            "box_score_thresh": box_score_thresh,
            "box_nms_thresh": box_nms_thresh,
            "box_detections_per_img": box_detections_per_img,
            "box_fg_iou_thresh": box_fg_iou_thresh,
            "box_bg_iou_thresh": box_bg_iou_thresh,
            "box_batch_size_per_image": box_batch_size_per_image,
            "box_positive_fraction": box_positive_fraction,
            "bbox_reg_weights": tuple(float(w) for w in bbox_reg_weights),
            "roi_align_aligned": bool(roi_align_aligned),
            "batch_norm_epsilon": batch_norm_epsilon,
            "seed": seed,
        }

        spec = self.backbone.compute_output_spec(keras.KerasTensor((1,) + image_size + (3,)))
        self._feature_shapes = [tuple(t.shape) for t in spec] if fpn else tuple(spec.shape)
        self.build((None,) + image_size + (3,))

    def build(self, input_shape):
        feature_shapes = self._feature_shapes
        if self.use_fpn:
            self.fpn.build(feature_shapes)
            rpn_input = tuple(feature_shapes[0][:-1]) + (self.fpn_channels,)
            roi_channels = self.fpn_channels
        else:
            rpn_input = tuple(feature_shapes)
            roi_channels = feature_shapes[-1]
        self.rpn_head.build(rpn_input)
        size = self.roi_align.output_size
        if isinstance(self.box_head, MLPBoxHead):
            self.box_head.build((None, None, size, size, roi_channels))
            self.box_predictor.build((None, None, self.box_head.units))
        elif isinstance(self.box_head, ConvFCBoxHead):
            self.box_head.build((None, None, size, size, roi_channels))
            self.box_predictor.build((None, None, self.box_head.output_units))
        else:
            self.box_predictor.build((None, None, self.box_head.output_shape[-1]))
        self.built = True

    # --- The forward pass, written once -----------------------------------------------------
    def _feature_maps(self, inputs, training):
        """(RPN feature maps, RoI feature maps) of normalised images."""
        features = self.backbone(inputs, training=training)
        if self.fpn is None:
            return [features], [features]
        pyramid = self.fpn(features, training=training)
        return pyramid, [pyramid[i] for i in self._roi_levels]

    def _anchors(self, inputs, rpn_features):
        """Anchors of each RPN level for the feature maps of this frame (static shapes fold to
        constants; a frame known only at run time gets anchors computed in the graph)."""
        frame = ops.shape(inputs)[1:3]
        sizes = [ops.shape(f)[1:3] for f in rpn_features]
        return feature_map_anchors(frame, sizes, self.anchor_sizes, self.aspect_ratios)

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(height, width) of each RPN level's feature map for a ``height`` x ``width`` frame
        (one forward pass of the backbone and pyramid on zeros)."""
        inputs = ops.zeros((1, int(height), int(width), 3), "float32")
        rpn_features, _ = self._feature_maps(inputs, training=False)
        return [tuple(int(v) for v in f.shape[1:3]) for f in rpn_features]

    def _box_branch(self, roi_features, rois, training):
        """Class logits [B, R, C + 1] and deltas [B, R, C, 4] for RoIs [B, R, 4]."""
        # RoIAlign's fused crop_and_resize kernel has no XLA kernel and no TFLite builtin: inside
        # an XLA-compiled step, or while tracing for export, use the gather implementation (same
        # values).
        portable = getattr(self, "_xla_step", False) or getattr(self, "_portable_ops", False)
        method = "gather" if portable else None
        pooled = self.roi_align(roi_features, rois, method=method)
        if isinstance(self.box_head, MLPBoxHead):
            x = self.box_head(pooled)
        elif isinstance(self.box_head, ConvFCBoxHead):
            x = self.box_head(pooled, training=training)
        else:
            batch, num = ops.shape(pooled)[0], pooled.shape[1]
            flat = ops.reshape(pooled, (-1,) + tuple(pooled.shape[2:]))
            x = ops.reshape(self.box_head(flat, training=training), (batch, num, -1))
        return self.box_predictor(x)

    def detect(self, inputs, image_size, training=False):
        """Detections for normalised images ``inputs`` [B, H, W, 3] of any frame whose content
        fills the top-left ``image_size`` (height, width); boxes in pixels of that frame."""
        rpn_features, roi_features = self._feature_maps(inputs, training)
        logits, deltas = self.rpn_head(rpn_features)
        anchors = self._anchors(inputs, rpn_features)
        proposals, valid = self.test_proposals(logits, deltas, anchors, image_size)
        class_logits, box_deltas = self._box_branch(roi_features, proposals, training)
        return self.decoder(class_logits, box_deltas, proposals, valid, image_size)

    def call(self, images, training=False):
        """Detections for raw images already at ``image_size`` (pixels of that padded frame)."""
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[-1] not in (None, 3):
            raise InputShapeError(
                f"FasterRCNN: expected [batch, height, width, 3] images, got shape {shape}"
            )
        inputs = preprocess_images(images, self.backbone_name)
        return self.detect(inputs, ops.shape(images)[1:3], training=training)

    # --- Training -------------------------------------------------------------------------
    def compute_losses(self, images, bounding_boxes, training=True):
        """The four Faster R-CNN loss terms and their sum, as a dict of scalars."""
        gt_boxes = ops.cast(bounding_boxes["boxes"], "float32")
        gt_labels = ops.cast(bounding_boxes["labels"], "int32")
        gt_valid = gt_labels >= 0

        inputs = preprocess_images(images, self.backbone_name)
        frame = ops.shape(images)[1:3]
        rpn_features, roi_features = self._feature_maps(inputs, training)
        logits, deltas = self.rpn_head(rpn_features)
        logits = ops.cast(logits, "float32")
        deltas = ops.cast(deltas, "float32")

        anchors_per_level = self._anchors(inputs, rpn_features)
        anchors = ops.concatenate(anchors_per_level, axis=0)
        rpn_labels, rpn_box_targets = self.rpn_targets(
            anchors, gt_boxes, gt_valid, seed=self.seed_generator
        )
        sampled = ops.cast(rpn_labels >= 0, "float32")
        positive = ops.cast(rpn_labels > 0, "float32")
        num_sampled = ops.maximum(_replica_mean(ops.sum(sampled)), 1.0)
        rpn_cls = ops.binary_crossentropy(ops.maximum(rpn_labels, 0.0), logits, from_logits=True)
        rpn_cls_loss = ops.sum(rpn_cls * sampled) / num_sampled
        rpn_box = ops.sum(smooth_l1(deltas - rpn_box_targets, 1.0 / 9.0), axis=-1)
        rpn_box_loss = ops.sum(rpn_box * positive) / num_sampled

        proposals, valid = self.train_proposals(logits, deltas, anchors_per_level, frame)
        samples = self.roi_sampler(proposals, valid, gt_boxes, gt_labels, seed=self.seed_generator)
        class_logits, box_deltas = self._box_branch(roi_features, samples["rois"], training)
        class_logits = ops.cast(class_logits, "float32")
        box_deltas = ops.cast(box_deltas, "float32")
        weights = samples["weights"]
        num_rois = ops.maximum(_replica_mean(ops.sum(weights)), 1.0)
        rcnn_cls = ops.sparse_categorical_crossentropy(
            samples["labels"], class_logits, from_logits=True
        )
        rcnn_cls_loss = ops.sum(rcnn_cls * weights) / num_rois
        class_index = ops.maximum(samples["labels"] - 1, 0)
        picked = ops.take_along_axis(box_deltas, class_index[:, :, None, None], axis=2)[:, :, 0, :]
        fg = ops.cast(samples["labels"] > 0, "float32") * weights
        rcnn_box = ops.sum(smooth_l1(picked - samples["box_targets"], 1.0 / 9.0), axis=-1)
        rcnn_box_loss = ops.sum(rcnn_box * fg) / num_rois

        total = rpn_cls_loss + rpn_box_loss + rcnn_cls_loss + rcnn_box_loss
        return {
            "loss": total,
            "rpn_cls_loss": rpn_cls_loss,
            "rpn_box_loss": rpn_box_loss,
            "rcnn_cls_loss": rcnn_cls_loss,
            "rcnn_box_loss": rcnn_box_loss,
        }

    def compile(self, optimizer="sgd", jit_compile=False, **kwargs):
        """Compile with an optimizer; the loss is the model's own, so no ``loss`` argument."""
        if kwargs.get("loss") is not None:
            raise ValueError("FasterRCNN computes its own multi-task loss; do not pass `loss`")
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config):
        """Re-compile a loaded model with its saved optimizer (Keras skips models whose
        ``compile`` is overridden unless they say how)."""
        try:
            config = keras.saving.deserialize_keras_object(config)
        except (TypeError, ValueError) as exc:  # e.g. a custom schedule not registered here
            warnings.warn(
                f"the saved optimizer was not restored ({exc}); call compile()", stacklevel=2
            )
            return
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def _update_trackers(self, losses):
        for name, value in losses.items():
            self.loss_trackers[name].update_state(value)
        logs = {name: tracker.result() for name, tracker in self.loss_trackers.items()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces step outputs across workers with ``strategy.reduce(MEAN, axis=0)``,
            # which needs a batch axis: give each scalar one (the reduction returns a scalar).
            logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    @staticmethod
    def _unpack(data):
        if isinstance(data, (tuple, list)):
            data = data[0]
        return data["images"], data["bounding_boxes"]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skip Keras' symbolic build under a strategy: the detector is built in ``__init__``.

        Keras (3.15, TensorFlow trainer) builds a model created in a strategy's scope by pulling a
        batch from the distributed iterator and ``strategy.reduce``-ing it, which fails for dict
        batches under ``MultiWorkerMirroredStrategy``. Only the optimizer needs building here.
        """
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            with self.distribute_strategy.scope():
                optimizer.build(self.trainable_variables)

    def _mark_xla_step(self, xla: bool) -> None:
        # Read while the step is traced (Python), so a plain attribute is enough. A TPU compiles
        # every step with XLA whatever ``jit_compile`` says.
        xla = xla or isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)
        object.__setattr__(self, "_xla_step", bool(xla))

    @contextlib.contextmanager
    def portable_ops(self):
        """Graphs traced inside this block use only ops that the TFLite and ONNX converters
        turn into builtins (RoIAlign by gathers instead of ``crop_and_resize``); same values."""
        previous = getattr(self, "_portable_ops", False)
        object.__setattr__(self, "_portable_ops", True)
        try:
            yield self
        finally:
            object.__setattr__(self, "_portable_ops", previous)

    def make_predict_function(self, force=False):
        """The predict function is never XLA-compiled, even after ``compile(jit_compile=True)``.

        The final per-class NMS and RoIAlign's ``crop_and_resize`` have no XLA kernels; the
        backbone still runs TensorFlow's own fused kernels.
        """
        jit = self._jit_compile
        self._jit_compile = False
        try:
            return super().make_predict_function(force=force)
        finally:
            self._jit_compile = jit

    def train_step(self, data):
        self._mark_xla_step(self.jit_compile)
        images, bounding_boxes = self._unpack(data)
        trainable = self.trainable_variables
        with tf.GradientTape() as tape:
            losses = self.compute_losses(images, bounding_boxes, training=True)
            loss = losses["loss"]
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            if replicas > 1:
                # Each replica sees 1/replicas of the global batch and the optimizer sums their
                # gradients: scale so the sum is the gradient of the global batch's mean loss.
                loss = loss / replicas
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, trainable)
        self.optimizer.apply(grads, trainable)
        return self._update_trackers(losses)

    def test_step(self, data):
        self._mark_xla_step(self.jit_compile)
        images, bounding_boxes = self._unpack(data)
        losses = self.compute_losses(images, bounding_boxes, training=False)
        return self._update_trackers(losses)

    # --- Inference on raw images ------------------------------------------------------------
    def resize_and_pad(self, images):
        """Resize same-size images to fit ``image_size`` and pad; returns (images, scale)."""
        images = ops.cast(images, "float32")
        target_h, target_w = self.image_size
        shape = ops.shape(images)
        h = ops.cast(shape[1], "float32")
        w = ops.cast(shape[2], "float32")
        scale = ops.minimum(target_h / h, target_w / w)
        new_h = ops.minimum(ops.cast(ops.round(h * scale), "int32"), target_h)
        new_w = ops.minimum(ops.cast(ops.round(w * scale), "int32"), target_w)
        resized = tf.image.resize(images, ops.stack([new_h, new_w]), method="bilinear")
        padded = tf.image.pad_to_bounding_box(resized, 0, 0, target_h, target_w)
        return ops.reshape(padded, (-1, target_h, target_w, 3)), scale

    def min_max_size(self, height, width):
        """torchvision's resized size: the short side to ``min_size`` unless the long side would
        pass ``max_size``. As torchvision computes it in eager mode, the scale is a float64
        quotient and each side is ``floor(side * scale)`` in float64, so rounding can land one
        pixel short (194 px at scale 800 / 194 becomes 799)."""
        h = ops.cast(height, "float64")
        w = ops.cast(width, "float64")
        scale = ops.minimum(
            float(self.min_size) / ops.minimum(h, w), float(self.max_size) / ops.maximum(h, w)
        )
        return ops.cast(ops.floor(h * scale), "int32"), ops.cast(ops.floor(w * scale), "int32")

    def min_max_size_int32(self, height, width):
        """:meth:`min_max_size` without float64, for exported graphs (TFLite has no float64
        kernels).

        Which limit decides is an exact integer comparison (``min_size * long <= max_size *
        short``). The deciding side ``d`` becomes ``floor(d * (n / d))`` in float64, ``n`` or
        ``n - 1``: read from a table computed here in float64 for ``d`` below 16384 (the
        limit itself above). The other side ``v`` is ``floor(v * n / d)`` in integers, which is
        float64's answer unless ``v * n / d`` is itself an integer that float64 lands just below
        (15 of 200,000 random size pairs up to 5000 px).
        """
        h = ops.cast(height, "int32")
        w = ops.cast(width, "int32")
        short, long = ops.minimum(h, w), ops.maximum(h, w)
        by_min = self.min_size * long <= self.max_size * short
        side = ops.where(by_min, short, long)
        limit = ops.where(by_min, self.min_size, self.max_size)
        sides = np.arange(_MIN_MAX_TABLE_SIZE, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            tables = [
                np.nan_to_num(np.floor(sides * (n / sides))) for n in (self.min_size, self.max_size)
            ]
        index = ops.minimum(side, _MIN_MAX_TABLE_SIZE - 1)
        looked_up = ops.where(
            by_min,
            ops.take(tables[0].astype("int32"), index),
            ops.take(tables[1].astype("int32"), index),
        )
        deciding = ops.where(side < _MIN_MAX_TABLE_SIZE, looked_up, limit)

        def resized(v):
            return ops.where(v == side, deciding, (v * limit) // side)

        return resized(h), resized(w)

    def _predict_min_max(self, images):
        """``min_max`` transform: normalise, resize, pad to 32 with zeros, detect, map back."""
        shape = ops.shape(images)
        inputs = preprocess_images(images, self.backbone_name)
        if getattr(self, "_portable_ops", False):
            new_h, new_w = self.min_max_size_int32(shape[1], shape[2])
        else:
            new_h, new_w = self.min_max_size(shape[1], shape[2])
        inputs = tf.image.resize(inputs, ops.stack([new_h, new_w]), method="bilinear")
        frame_h = (new_h + 31) // 32 * 32
        frame_w = (new_w + 31) // 32 * 32
        inputs = tf.pad(inputs, [[0, 0], [0, frame_h - new_h], [0, frame_w - new_w], [0, 0]])
        # Padding by computed amounts hides the channel count from the TFLite converter.
        batch = images.shape[0] if images.shape[0] is not None else -1
        inputs = ops.reshape(inputs, (batch, frame_h, frame_w, 3))
        detections = self.detect(inputs, (new_h, new_w))
        ratio_h = ops.cast(shape[1], "float32") / ops.cast(new_h, "float32")
        ratio_w = ops.cast(shape[2], "float32") / ops.cast(new_w, "float32")
        ratios = ops.stack([ratio_w, ratio_h, ratio_w, ratio_h])
        return detections, detections["boxes"] * ratios

    def predict(self, x, *args, **kwargs):
        """``keras.Model.predict`` on raw images, validated first (see :func:`check_images`)."""
        return super().predict(check_images(x, "predict"), *args, **kwargs)

    def predict_on_batch(self, x):
        """``keras.Model.predict_on_batch``, validated first (see :func:`check_images`)."""
        return super().predict_on_batch(check_images(x, "predict_on_batch"))

    def predict_step(self, data):
        if isinstance(data, (tuple, list)):
            data = data[0]
        if isinstance(data, dict):
            data = data["images"]
        self._mark_xla_step(False)
        shape = ops.shape(data)
        if self.resize_mode == "min_max":
            detections, boxes = self._predict_min_max(ops.cast(data, "float32"))
        else:
            images, scale = self.resize_and_pad(data)
            detections = self(images, training=False)
            boxes = detections["boxes"] / scale
        boxes = clip_boxes(boxes, shape[1], shape[2])
        valid = ops.expand_dims(detections["labels"] >= 0, -1)
        detections["boxes"] = ops.where(valid, boxes, 0.0)
        return detections

    def export(
        self,
        filepath,
        format="tf_saved_model",
        verbose=None,
        input_signature=None,
        classes: Sequence[str] | None = None,
        **kwargs,
    ):
        """Keras' ``Model.export`` for a detector: ``format`` is ``tf_saved_model``, ``onnx`` or
        ``litert``, each taking raw uint8 RGB images and returning the TF OD API detection
        outputs (see :mod:`kdetect.export`; ONNX and LiteRT files take one image of any size).

        ``classes``: class names stored with the export (default ``class_0``...). Keyword
        options: ``input_type`` (SavedModel's ``serving_default``), ``opset_version`` (ONNX),
        ``quantize`` (LiteRT: ``float16`` or ``dynamic``). ``input_signature`` cannot be
        changed (the signature is uint8 ``[batch, height, width, 3]``). Returns the path.
        """
        del verbose  # the exporters keep their logging off the console either way
        if format not in exporting.KERAS_FORMATS:
            raise exporting.ExportError(
                f"format: expected one of {', '.join(exporting.KERAS_FORMATS)}, got {format!r}"
            )
        if input_signature is not None:
            raise exporting.ExportError(
                "input_signature: a FasterRCNN export always takes uint8 [batch, height, width, 3]"
                " images (any size); leave it unset"
            )
        options = {
            "input_type": kwargs.pop("input_type", "encoded_image_string_tensor"),
            "opset": kwargs.pop("opset_version", None) or exporting.DEFAULT_OPSET,
            "quantize": kwargs.pop("quantize", None),
        }
        if kwargs:
            raise exporting.ExportError(f"export: unknown option(s) {', '.join(sorted(kwargs))}")
        return exporting.export_model(
            self, filepath, exporting.KERAS_FORMATS[format], classes=classes, **options
        )

    # --- Serialisation --------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "backbone": self.backbone_name,
                "fpn": self.use_fpn,
                "image_size": self.image_size,
                # Weights travel in the saved file; never re-download on load.
                "backbone_weights": None,
                "freeze": self.freeze,
                "frozen_batch_norm": self.frozen_batch_norm,
                "anchor_sizes": self.anchor_sizes,
                "aspect_ratios": self.aspect_ratios,
                "fpn_channels": self.fpn_channels,
                "fpn_batch_norm": self.fpn_batch_norm,
                "resize_mode": self.resize_mode,
                "min_size": self.min_size,
                "max_size": self.max_size,
                **self._config,
            }
        )
        return config

    @classmethod
    def from_torchvision(cls, weights, arch: str = "fasterrcnn_resnet50_fpn", **overrides):
        """A detector holding a torchvision Faster R-CNN checkpoint's weights.

        ``weights`` is a ``.pth`` / ``.safetensors`` file (read without torch and without
        running pickled code) or a state dict of arrays; ``arch`` is torchvision's builder name
        (``fasterrcnn_resnet50_fpn``). The result predicts what torchvision's ``model.eval()``
        predicts, with kdetect label ``i`` = torchvision label ``i + 1``; ``overrides`` change
        other ``FasterRCNN`` arguments (e.g. ``box_score_thresh``).
        """
        return load_torchvision(cls, weights, arch, **overrides)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("image_size", "aspect_ratios", "bbox_reg_weights"):
            if key in config and config[key] is not None:
                config[key] = tuple(config[key])
        if config.get("anchor_sizes") is not None:
            config["anchor_sizes"] = tuple(tuple(level) for level in config["anchor_sizes"])
        return cls(**config)
