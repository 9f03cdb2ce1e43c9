"""FCOS (Tian et al., 2019) as a ``keras.Model``: an anchor-free single-stage detector.

The same P3..P7 pyramid as RetinaNet (:func:`~kdetect.models.retinanet.model.
build_pyramid_features`); one location per cell of each level (a square "anchor" of the
level's size gives its centre and scale); the head
(:class:`~kdetect.models.fcos.head.FCOSHead`) predicts class scores, the four side distances
of a box and its centre-ness; scores are ``sqrt(sigmoid(class) * sigmoid(centre-ness))``,
decoded by the shared dense decoder (:class:`~kdetect.layers.dense.DenseDetectionDecoder`).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from kdetect.anchors import feature_map_anchors
from kdetect.layers.dense import DenseDetectionDecoder
from kdetect.models.base import DetectionModel, check_model_settings
from kdetect.models.fcos import torchvision
from kdetect.models.fcos.head import FCOSHead
from kdetect.models.retinanet.model import build_pyramid_features
from kdetect.models.transform import ImageTransform

LOSS_NAMES = ("loss", "cls_loss", "box_loss", "centerness_loss")
DEFAULT_ANCHOR_SIZES = (8.0, 16.0, 32.0, 64.0, 128.0)


@keras.saving.register_keras_serializable(package="kdetect")
class FCOS(DetectionModel):
    """Anchor-free detector: backbone -> FPN (P3..P7) -> class / box+centre-ness towers.

    Args:
        num_classes: number of object classes (sigmoid scores, no background class).
        backbone, image_size, backbone_weights, freeze, frozen_batch_norm,
            batch_norm_epsilon, fpn_channels, extra_levels_from: as for
            :class:`~kdetect.models.retinanet.RetinaNet`.
        anchor_sizes: the location size of each level P3..P7 (its assignment scale and the
            unit of its distances).
        center_sampling_radius, focal_alpha, focal_gamma, head_conv_depth: the head.
        score_thresh, topk_candidates, nms_thresh, detections_per_img: the decoder.
        resize_mode, min_size, max_size: the input transform's rule.
        seed: seed of the training-time random state.
    """

    LOSS_NAMES = LOSS_NAMES
    TYPE = "fcos"
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
        anchor_sizes: Sequence[float] = DEFAULT_ANCHOR_SIZES,
        head_conv_depth: int = 4,
        center_sampling_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_thresh: float = 0.2,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
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
        # one size per level: plain numbers, or one-size lists as other types' anchor_sizes
        levels = [s if isinstance(s, Sequence) else (s,) for s in anchor_sizes]
        if len(levels) != 5 or any(len(level) != 1 for level in levels):
            raise ValueError(f"anchor_sizes needs one size for each of P3..P7, got {anchor_sizes}")
        self.anchor_sizes = tuple(float(level[0]) for level in levels)
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
        self.head = FCOSHead(
            self.num_classes,
            fpn_channels,
            conv_depth=head_conv_depth,
            center_sampling_radius=center_sampling_radius,
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

    def pyramid(self, inputs, training=False):
        """P3..P7 of normalised images."""
        return self.fpn(self.backbone(inputs, training=training), training=training)

    def anchors(self, inputs, features):
        """One square location box [N_l, 4] per cell of each level."""
        sizes = [ops.shape(f)[1:3] for f in features]
        levels = tuple((s,) for s in self.anchor_sizes)
        return feature_map_anchors(ops.shape(inputs)[1:3], sizes, levels, (1.0,))

    def detect(self, inputs, image_size, training=False):
        features = self.pyramid(inputs, training)
        logits, distances, centerness = self.head(features)
        anchors = self.anchors(inputs, features)
        scores = [
            ops.sqrt(
                ops.sigmoid(ops.cast(x, "float32")) * ops.sigmoid(ops.cast(c, "float32"))[..., None]
            )
            for x, c in zip(logits, centerness, strict=True)
        ]
        boxes = [
            self.head.box_coder.decode(ops.cast(d, "float32"), a[None])
            for d, a in zip(distances, anchors, strict=True)
        ]
        return self.decoder(scores, boxes, image_size=image_size)

    def compute_losses(self, images, bounding_boxes, training=True):
        """Classification, box and centre-ness losses of the head, and their sum."""
        gt_boxes = ops.cast(bounding_boxes["boxes"], "float32")
        gt_labels = ops.cast(bounding_boxes["labels"], "int32")
        inputs = self.preprocess(images)
        features = self.pyramid(inputs, training)
        logits, distances, centerness = self.head(features)
        terms = self.head.losses(
            ops.concatenate(logits, axis=1),
            ops.concatenate(distances, axis=1),
            ops.concatenate(centerness, axis=1),
            self.anchors(inputs, features),
            gt_boxes,
            gt_labels,
        )
        return dict(zip(LOSS_NAMES, (sum(terms),) + tuple(terms), strict=True))

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
            "head_conv_depth": head.conv_depth,
            "center_sampling_radius": head.center_sampling_radius,
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
        for key in ("image_size", "anchor_sizes"):
            if config.get(key) is not None:
                config[key] = tuple(config[key])
        return cls(**config)

    @staticmethod
    def torchvision_num_classes(state, name, arch):
        return torchvision.num_classes(state, name, arch)

    def torchvision_weight_plan(self):
        return torchvision.weight_plan(self)
