"""RetinaNet (Lin et al., 2017) as a ``keras.Model``: a single-stage dense detector.

Backbone maps C3..C5 feed a feature pyramid with two learned extra levels (P3..P7); one head
(:class:`~kdetect.models.retinanet.head.RetinaNetHead`) predicts, at every location of every
level, sigmoid class scores and box deltas for each of its anchors; the dense decoder
(:class:`~kdetect.layers.dense.DenseDetectionDecoder`) keeps each level's best candidates and runs
per-class NMS. What every detector shares is :class:`~kdetect.models.base.DetectionModel`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from kdetect.anchors import feature_map_anchors
from kdetect.backbones import build_backbone
from kdetect.layers import FeaturePyramid
from kdetect.layers.dense import DenseDetectionDecoder
from kdetect.models.base import DetectionModel, check_model_settings
from kdetect.models.retinanet import torchvision
from kdetect.models.retinanet.head import RetinaNetHead
from kdetect.models.transform import ImageTransform

LOSS_NAMES = ("loss", "cls_loss", "box_loss")
#: Three octave scales per level, truncated to whole pixels as torchvision's builder does.
DEFAULT_ANCHOR_SIZES = tuple(
    (float(x), float(int(x * 2 ** (1 / 3))), float(int(x * 2 ** (2 / 3))))
    for x in (32, 64, 128, 256, 512)
)


def build_pyramid_features(
    backbone: str,
    image_size: tuple[int, int],
    channels: int,
    extra_convs: str,
    **backbone_options,
) -> tuple[keras.Model, FeaturePyramid]:
    """The backbone cut at C3..C5 and the pyramid P3..P7 on it (``extra_convs``: P6 from
    ``"p5"`` or ``"c5"``); ``backbone_options`` of :func:`kdetect.backbones.build_backbone`."""
    features, full = build_backbone(backbone, image_size + (3,), **backbone_options)
    if len(features.outputs) != 4:
        raise ValueError(f"backbone '{backbone}' gives no C3..C5 maps for a pyramid")
    body = keras.Model(full.inputs, features.outputs[1:], name=f"{backbone}_c3_c5")
    spec = body.compute_output_spec(keras.KerasTensor((1,) + image_size + (3,)))
    strides = tuple(image_size[0] // t.shape[1] for t in spec)
    pyramid = FeaturePyramid(
        channels, extra_level=False, input_strides=strides, extra_convs=extra_convs, name="fpn"
    )
    pyramid.build([tuple(t.shape) for t in spec])
    return body, pyramid


@keras.saving.register_keras_serializable(package="kdetect")
class RetinaNet(DetectionModel):
    """Single-stage detector: backbone -> FPN (P3..P7) -> class / box towers -> dense decoder.

    Training batches and prediction follow :class:`~kdetect.models.base.DetectionModel`;
    ``fit`` optimises the focal classification loss plus the box loss and reports each.

    Args:
        num_classes: number of object classes (sigmoid scores, no background class).
        backbone: a name of :data:`kdetect.backbone_names.BACKBONES` with C3..C5 maps.
        image_size: ``(height, width)`` of the training frame; multiples of 32 (128 works).
        backbone_weights, freeze, frozen_batch_norm, batch_norm_epsilon: as for
            :class:`~kdetect.models.faster_rcnn.FasterRCNN`.
        fpn_channels: width of the pyramid and the head (GroupNorm needs a multiple of 32).
        extra_levels_from: ``"p5"`` (RetinaNet) or ``"c5"`` (torchvision's v2): P6's input.
        anchor_sizes: one tuple of sizes per level P3..P7 (default three octave scales of
            32..512); aspect_ratios: height / width ratios of every level.
        head_group_norm: GroupNorm(32) in the head's towers (v2); head_conv_depth: their convs.
        box_loss: ``l1`` on encoded deltas (v1) or ``giou`` on decoded boxes (v2).
        fg_iou_thresh, bg_iou_thresh: anchor matching; focal_alpha, focal_gamma: focal loss.
        score_thresh, topk_candidates, nms_thresh, detections_per_img: the decoder.
        resize_mode, min_size, max_size: the input transform's rule.
        seed: seed of the training-time random state.
    """

    LOSS_NAMES = LOSS_NAMES
    TYPE = "retinanet"
    TORCHVISION_ARCHITECTURES = torchvision.ARCHITECTURES

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        image_size: Sequence[int] = (800, 800),
        backbone_weights: str | None = None,
        freeze: str | None = None,
        frozen_batch_norm: bool | None = None,
        batch_norm_epsilon: float | None = None,
        fpn_channels: int = 256,
        extra_levels_from: str = "p5",
        anchor_sizes: Sequence[Sequence[float]] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        head_group_norm: bool = False,
        head_conv_depth: int = 4,
        box_loss: str = "l1",
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_img: int = 300,
        resize_mode: str = "fit",
        min_size: int = 800,
        max_size: int = 1333,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_model_settings(num_classes, backbone, self.TYPE)
        self.transform = ImageTransform(image_size, resize_mode, min_size, max_size)
        self.num_classes = int(num_classes)
        self.backbone_name = backbone
        self.backbone_weights, self.freeze = backbone_weights, freeze
        self.frozen_batch_norm = (
            backbone_weights is not None if frozen_batch_norm is None else frozen_batch_norm
        )
        self.batch_norm_epsilon, self.seed = batch_norm_epsilon, seed
        self.anchor_sizes = tuple(
            tuple(float(s) for s in level) for level in (anchor_sizes or DEFAULT_ANCHOR_SIZES)
        )
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        if len(self.anchor_sizes) != 5 or len({len(s) for s in self.anchor_sizes}) != 1:
            raise ValueError("anchor_sizes needs five tuples (P3..P7) of one length")
        self.backbone, self.fpn = build_pyramid_features(
            backbone,
            self.image_size,
            fpn_channels,
            extra_levels_from,
            weights=backbone_weights,
            freeze=freeze,
            frozen_batch_norm=self.frozen_batch_norm,
            batch_norm_epsilon=batch_norm_epsilon,
        )
        self.head = RetinaNetHead(
            len(self.anchor_sizes[0]) * len(self.aspect_ratios),
            self.num_classes,
            fpn_channels,
            conv_depth=head_conv_depth,
            group_norm=head_group_norm,
            box_loss=box_loss,
            fg_iou_thresh=fg_iou_thresh,
            bg_iou_thresh=bg_iou_thresh,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            name="head",
        )
        self.decoder = DenseDetectionDecoder(
            score_thresh, nms_thresh, detections_per_img, topk_candidates, name="decoder"
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._init_detector()
        self.build((None,) + self.image_size + (3,))

    def build(self, input_shape):
        self.head.build(None)
        self.built = True

    # --- The forward pass ------------------------------------------------------------------
    def pyramid(self, inputs, training=False):
        """P3..P7 of normalised images."""
        return self.fpn(self.backbone(inputs, training=training), training=training)

    def anchors(self, inputs, features):
        """Anchors [N_l, 4] of each level for the feature maps of this frame."""
        sizes = [ops.shape(f)[1:3] for f in features]
        return feature_map_anchors(
            ops.shape(inputs)[1:3], sizes, self.anchor_sizes, self.aspect_ratios
        )

    def anchor_boxes(self, height: int, width: int, anchor_sizes=None, aspect_ratios=None):
        """The anchors per level of a ``height`` x ``width`` frame (see
        :meth:`DetectionModel.anchor_boxes`)."""
        inputs = ops.zeros((1, int(height), int(width), 3), "float32")
        sizes = [tuple(f.shape[1:3]) for f in self.pyramid(inputs)]
        anchors = feature_map_anchors(
            (height, width),
            sizes,
            self.anchor_sizes if anchor_sizes is None else anchor_sizes,
            self.aspect_ratios if aspect_ratios is None else aspect_ratios,
        )
        return [ops.convert_to_numpy(a) for a in anchors]

    @property
    def anchor_iou_thresholds(self) -> tuple[float, float]:
        """The head's ``(fg_iou_thresh, bg_iou_thresh)``."""
        return self.head.fg_iou_thresh, self.head.bg_iou_thresh

    def detect(self, inputs, image_size, training=False):
        features = self.pyramid(inputs, training)
        logits, deltas = self.head(features)
        anchors = self.anchors(inputs, features)
        scores = [ops.sigmoid(ops.cast(x, "float32")) for x in logits]
        boxes = [
            self.head.box_coder.decode(ops.cast(d, "float32"), a[None])
            for d, a in zip(deltas, anchors, strict=True)
        ]
        return self.decoder(scores, boxes, image_size=image_size)

    def compute_losses(self, images, bounding_boxes, training=True):
        """Focal classification and box losses of the head over every anchor, and their sum."""
        gt_boxes = ops.cast(bounding_boxes["boxes"], "float32")
        gt_labels = ops.cast(bounding_boxes["labels"], "int32")
        inputs = self.preprocess(images)
        features = self.pyramid(inputs, training)
        logits, deltas = self.head(features)
        anchors = ops.concatenate(self.anchors(inputs, features), axis=0)
        terms = self.head.losses(
            ops.concatenate(logits, axis=1),
            ops.concatenate(deltas, axis=1),
            anchors,
            gt_boxes,
            gt_labels,
        )
        return dict(zip(LOSS_NAMES, (sum(terms),) + tuple(terms), strict=True))

    # --- Serialisation ----------------------------------------------------------------------
    def get_config(self):
        head, decoder = self.head, self.decoder
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "backbone": self.backbone_name,
            "image_size": self.image_size,
            "backbone_weights": None,  # weights travel in the saved file
            "freeze": self.freeze,
            "frozen_batch_norm": self.frozen_batch_norm,
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "fpn_channels": self.fpn.channels,
            "extra_levels_from": self.fpn.extra_convs,
            "anchor_sizes": self.anchor_sizes,
            "aspect_ratios": self.aspect_ratios,
            "head_group_norm": head.group_norm,
            "head_conv_depth": head.conv_depth,
            "box_loss": head.box_loss,
            "fg_iou_thresh": head.fg_iou_thresh,
            "bg_iou_thresh": head.bg_iou_thresh,
            "focal_alpha": head.focal_alpha,
            "focal_gamma": head.focal_gamma,
            "score_thresh": decoder.score_thresh,
            "topk_candidates": decoder.topk_candidates,
            "nms_thresh": decoder.nms_thresh,
            "detections_per_img": decoder.detections_per_img,
            "resize_mode": self.resize_mode,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("image_size", "aspect_ratios"):
            if config.get(key) is not None:
                config[key] = tuple(config[key])
        return cls(**config)

    # --- torchvision checkpoints (DetectionModel.from_torchvision) ----------------------------
    @classmethod
    def from_torchvision(cls, weights, arch: str | None = None, **overrides):
        """:meth:`DetectionModel.from_torchvision`; the published v1 file's pre-0.13 names of
        the head's convs are read too."""
        return super().from_torchvision(torchvision.with_modern_names(weights), arch, **overrides)

    @staticmethod
    def torchvision_num_classes(state, name, arch):
        return torchvision.num_classes(state, name, arch)

    def torchvision_weight_plan(self):
        return torchvision.weight_plan(self)
