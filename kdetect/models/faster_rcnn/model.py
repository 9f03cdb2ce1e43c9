"""Faster R-CNN (Ren et al., 2015) as a ``keras.Model``, with an optional feature pyramid.

The model is its stages, assembled here: the input transform, a backbone (+ FPN), the RPN
(:class:`~kdetect.layers.RPNHead`, its target assigner and proposal generator) and the RoI
heads (RoIAlign, box head and predictor, the sampler and the decoder). Each stage owns its loss
terms (``RPNTargetAssigner.losses``, ``BoxPredictor.losses``); what every detector shares
(training steps, prediction on raw images, export) is :class:`~kdetect.models.base.DetectionModel`;
the checks and layer builders are in :mod:`kdetect.models.assembly`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from kdetect.backbones.names import checked_anchor_sizes
from kdetect.layers import (
    BoxPredictor,
    ConvFCBoxHead,
    DetectionDecoder,
    MLPBoxHead,
    MultiLevelRoIAlign,
    ProposalGenerator,
    RoISampler,
    RPNHead,
    RPNTargetAssigner,
)
from kdetect.models import LOSS_NAMES
from kdetect.models.base import DetectionModel
from kdetect.models.faster_rcnn import assembly, torchvision
from kdetect.models.faster_rcnn.assembly import STAGES
from kdetect.models.transform import ImageTransform
from kdetect.ops.anchors import feature_map_anchors


@keras.saving.register_keras_serializable(package="kdetect")
class FasterRCNN(DetectionModel):
    """Two-stage object detector: backbone (+ FPN) -> RPN -> RoIAlign -> box head -> decoder.

    The model owns its input transform, :attr:`transform` (an
    :class:`~kdetect.models.transform.ImageTransform` built from ``image_size``, ``resize_mode``,
    ``min_size`` and ``max_size``): the one resize of training, evaluation, predict and export.
    Training batches are ``{"images": [B, H, W, 3], "bounding_boxes": {"boxes": [B, M, 4] xyxy
    pixels, "labels": [B, M] (-1 = padding)}}`` with images already resized by it and padded to
    ``image_size`` (``make_dataset(source, model.transform)``); ``fit`` optimises the sum of four
    losses and reports each one. ``predict`` takes raw images of any size, resizes them by the
    transform and returns boxes in the input images' pixels.

    Args:
        num_classes: number of object classes (background is added internally).
        backbone: ``resnet50``, ``resnet101``, ``vgg16``, ``mobilenet_v2`` or ``tiny``.
        fpn: use a feature pyramid (P2-P6) instead of the single stride-16 map (C4).
        image_size: ``(height, width)`` of the training frame (and ``fit``'s prediction frame);
            multiples of 32.
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
        resize_mode: ``fit`` or ``min_max``, the transform's rule; ``min_size`` / ``max_size``
            are the latter's sizes.
        batch_norm_epsilon: epsilon of the backbone's batch norm; None keeps the backbone's own.
        seed: seed of the training-time samplers.
        rpn_target_assigner, proposal_generator, roi_align, roi_sampler, detection_decoder:
            the weightless stages (:mod:`kdetect.layers`), to assemble a detector with other
            ones; by default they are built from the plain settings above, which an injected
            layer replaces (``roi_align`` must pool from the backbone's strides).

    RoIAlign reads the trace flags ``xla_step`` and ``portable_graph`` (see
    :class:`DetectionModel`): its fused ``crop_and_resize`` kernel has neither an XLA kernel
    nor a TFLite builtin, so it runs on gathers instead.

    Needs the TensorFlow backend: NMS, the fused RoIAlign, the gradient tape and
    ``tf.distribute`` come from :mod:`kdetect.ops.tf_ops`, the resize from ``tf.image``.
    """

    LOSS_NAMES = LOSS_NAMES
    TYPE = "faster_rcnn"

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
        rpn_target_assigner: RPNTargetAssigner | None = None,
        proposal_generator: ProposalGenerator | None = None,
        roi_align: MultiLevelRoIAlign | None = None,
        roi_sampler: RoISampler | None = None,
        detection_decoder: DetectionDecoder | None = None,
        **kwargs,
    ):
        # (Long through its keyword arguments, torchvision's names; the body is assembly in
        # three marked parts.) The arguments, before anything else is bound: the stages' settings.
        arguments = dict(locals())
        super().__init__(**kwargs)
        # --- Settings: checked once, kept as attributes (get_config lists them) -------------
        assembly.check_settings(num_classes, box_head_type, backbone)
        self.transform = ImageTransform(image_size, resize_mode, min_size, max_size)
        self._keep_backbone_settings(
            num_classes, backbone, backbone_weights, freeze, frozen_batch_norm
        )
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.fpn_channels, self.fpn_batch_norm = fpn_channels, bool(fpn_batch_norm)
        self.box_head_type, self.box_head_units = box_head_type, box_head_units
        self.batch_norm_epsilon, self.seed = batch_norm_epsilon, seed

        # --- Layers with weights ------------------------------------------------------------
        parts = assembly.build_feature_layers(
            backbone,
            fpn,
            self.image_size,
            fpn_channels,
            self.fpn_batch_norm,
            weights=backbone_weights,
            freeze=freeze,
            frozen_batch_norm=self.frozen_batch_norm,
            batch_norm_epsilon=batch_norm_epsilon,
        )
        self.backbone, self.fpn, self._roi_levels = parts.backbone, parts.fpn, parts.roi_levels
        self.anchor_sizes = checked_anchor_sizes(anchor_sizes, fpn, parts.rpn_levels)
        num_anchors = len(self.anchor_sizes[0]) * len(self.aspect_ratios)
        self.rpn_head = RPNHead(
            num_anchors, parts.rpn_channels, conv_depth=rpn_conv_depth, name="rpn_head"
        )
        self.box_head = assembly.build_box_head(parts, backbone, box_head_type, box_head_units)
        self.box_predictor = BoxPredictor(self.num_classes, name="box_predictor")

        # --- Weightless stages: given, or built from the plain settings ----------------------
        c4_resnet = assembly.is_c4_resnet(backbone, fpn)
        stages = assembly.build_stages(arguments, parts.roi_strides, c4_resnet)
        for name in STAGES:
            setattr(self, name, stages[name])
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._init_detector()

        frame = (1,) + self.image_size + (3,)
        spec = self.backbone.compute_output_spec(keras.KerasTensor(frame))
        self._feature_shapes = [tuple(t.shape) for t in spec] if fpn else tuple(spec.shape)
        self.build((None,) + self.image_size + (3,))

    def build(self, input_shape):
        feature_shapes = self._feature_shapes
        if self.fpn is not None:
            self.fpn.build(feature_shapes)
            rpn_input = tuple(feature_shapes[0][:-1]) + (self.fpn_channels,)
            roi_channels = self.fpn_channels
        else:
            rpn_input = tuple(feature_shapes)
            roi_channels = feature_shapes[-1]
        self.rpn_head.build(rpn_input)
        size = self.roi_align.output_size
        if isinstance(self.box_head, (MLPBoxHead, ConvFCBoxHead)):
            self.box_head.build((None, None, size, size, roi_channels))
        self.box_predictor.build((None, None, assembly.box_head_width(self.box_head)))
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

    @property
    def anchor_iou_thresholds(self) -> tuple[float, float]:
        """The RPN's ``(fg_iou_thresh, bg_iou_thresh)``."""
        return self.rpn_target_assigner.fg_iou_thresh, self.rpn_target_assigner.bg_iou_thresh

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(height, width) of each RPN level's feature map for a ``height`` x ``width`` frame
        (one forward pass of the backbone and pyramid on zeros)."""
        inputs = ops.zeros((1, int(height), int(width), 3), "float32")
        rpn_features, _ = self._feature_maps(inputs, training=False)
        return [tuple(int(v) for v in f.shape[1:3]) for f in rpn_features]

    def _box_branch(self, roi_features, rois, training):
        """Class logits [B, R, C + 1] and deltas [B, R, C, 4] for RoIs [B, R, 4]."""
        method = "gather" if self.xla_step or self.portable_graph else None
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

    def compute_losses(self, images, bounding_boxes, training=True):
        """The four loss terms and their sum (``LOSS_NAMES``): the RPN's over its sampled
        anchors, then the box head's over the RoIs sampled from the proposals. Proposals
        always come from the training counts (``test_step`` too), so validation losses measure
        what training optimises. Proposals are clipped to the frame, or, when
        ``bounding_boxes`` also holds ``image_sizes`` ([B, 2] (height, width) of each image's
        content at the top left of the frame), to each image's content as torchvision's are,
        and the frame's padding is then the one prediction has
        (:meth:`ImageTransform.pad_like_prediction`)."""
        gt_boxes = ops.cast(bounding_boxes["boxes"], "float32")
        gt_labels = ops.cast(bounding_boxes["labels"], "int32")
        clip_to = bounding_boxes.get("image_sizes")
        inputs = self.preprocess(images)
        if clip_to is not None:
            inputs = self.transform.pad_like_prediction(inputs, clip_to)
        rpn_features, roi_features = self._feature_maps(inputs, training)
        logits, deltas = self.rpn_head(rpn_features)
        logits, deltas = ops.cast(logits, "float32"), ops.cast(deltas, "float32")
        anchors = self._anchors(inputs, rpn_features)
        rpn_terms = self.rpn_target_assigner.losses(
            logits,
            deltas,
            ops.concatenate(anchors, axis=0),
            gt_boxes,
            gt_labels,
            seed=self.seed_generator,
        )
        proposals, valid = self.proposal_generator(
            logits,
            deltas,
            anchors,
            image_size=ops.shape(images)[1:3] if clip_to is None else clip_to,
            training=True,
        )
        samples = self.roi_sampler(proposals, valid, gt_boxes, gt_labels, seed=self.seed_generator)
        class_logits, box_deltas = self._box_branch(roi_features, samples["rois"], training)
        terms = rpn_terms + self.box_predictor.losses(class_logits, box_deltas, samples)
        return dict(zip(LOSS_NAMES, (sum(terms),) + terms, strict=True))

    def detect(self, inputs, image_size, training=False):
        """Detections for normalised images ``inputs`` [B, H, W, 3] of any frame whose content
        fills the top-left ``image_size`` (height, width); boxes in pixels of that frame."""
        rpn_features, roi_features = self._feature_maps(inputs, training)
        logits, deltas = self.rpn_head(rpn_features)
        anchors = self._anchors(inputs, rpn_features)
        proposals, valid = self.proposal_generator(
            logits, deltas, anchors, image_size=image_size, training=False
        )
        class_logits, box_deltas = self._box_branch(roi_features, proposals, training)
        return self.detection_decoder(
            class_logits, box_deltas, proposals, valid, image_size=image_size
        )

    # --- Serialisation --------------------------------------------------------------------
    def get_config(self):
        """The plain settings (what recipes and older saved models hold; those of the weightless
        stages are read back from their layers), then each of those layers' own config, which
        :meth:`from_config` uses in place of the plain settings it covers."""
        c4_resnet = assembly.is_c4_resnet(self.backbone_name, self.fpn is not None)
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "backbone": self.backbone_name,
            "fpn": self.fpn is not None,
            "image_size": self.image_size,
            "backbone_weights": None,  # weights travel in the saved file; never re-download
            "freeze": self.freeze,
            "frozen_batch_norm": self.frozen_batch_norm,
            "anchor_sizes": self.anchor_sizes,
            "aspect_ratios": self.aspect_ratios,
            "fpn_channels": self.fpn_channels,
            "fpn_batch_norm": self.fpn_batch_norm,
            "resize_mode": self.resize_mode,
            "min_size": self.min_size,
            "max_size": self.max_size,
            **assembly.stage_settings(self, c4_resnet),
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "seed": self.seed,
            **{name: keras.saving.serialize_keras_object(getattr(self, name)) for name in STAGES},
        }

    # --- torchvision checkpoints (DetectionModel.from_torchvision) ------------------------------
    TORCHVISION = torchvision
    TORCHVISION_ARCHITECTURES = torchvision.ARCHITECTURES

    @classmethod
    def from_config(cls, config):
        return cls(**assembly.normalised_config(config))
