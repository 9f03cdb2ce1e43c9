"""Single-stage detectors on a feature pyramid: what RetinaNet and FCOS share.

Both run the backbone's C3..C5 maps through a feature pyramid with two extra levels (P3..P7),
one head shared by every level, and the dense decoder
(:class:`~kdetect.layers.dense.DenseDetectionDecoder`: per-level top-k, decoding, per-class
NMS). They differ only in their head and in the boxes their head predicts from: RetinaNet's
anchors (sizes x aspect ratios per location), FCOS' locations (one square per cell). A head
here is a layer with three methods:

* ``head(features)`` -- a tuple of outputs, each a list with one ``[B, N_l, ...]`` per level;
* ``head.predictions(outputs, anchors)`` -- per level, scores ``[B, N_l, C]`` and boxes
  ``[B, N_l, 4]`` for the decoder;
* ``head.losses(outputs, anchors, gt_boxes, gt_labels)`` -- its loss terms, in the order of the
  detector's ``LOSS_NAMES[1:]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import keras
from keras import ops

from kdetect.backbones.networks import build_backbone
from kdetect.layers import FeaturePyramid
from kdetect.layers.dense import DenseDetectionDecoder
from kdetect.models.base import DetectionModel, check_model_settings
from kdetect.models.transform import ImageTransform
from kdetect.ops.anchors import feature_map_anchors


def build_pyramid_features(
    backbone: str,
    image_size: tuple[int, int],
    channels: int,
    extra_convs: str,
    **backbone_options,
) -> tuple[keras.Model, FeaturePyramid]:
    """The backbone cut at C3..C5 and the pyramid P3..P7 on it (``extra_convs``: P6 from
    ``"p5"`` or ``"c5"``); ``backbone_options`` of
    :func:`kdetect.backbones.networks.build_backbone`."""
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


class PyramidDetector(DetectionModel):
    """Backbone -> FPN (P3..P7) -> one head on every level -> dense decoder.

    A subclass calls ``super().__init__`` with the settings below (``pyramid_settings(locals())``
    picks them from its own arguments), then sets :attr:`anchor_sizes` and
    :attr:`aspect_ratios` (the boxes its head predicts from, see :meth:`anchors`) and
    ``self.head``, then builds itself on its frame, ``self.build((None, H, W, 3))`` (the shape
    Keras' SavedModel signature takes); its ``get_config`` adds its own keys to this one's.

    Args:
        num_classes: number of object classes (sigmoid scores, no background class).
        backbone: a name of :data:`kdetect.backbones.names.BACKBONES` with C3..C5 maps.
        image_size: ``(height, width)`` of the training frame; multiples of 32 (128 works).
        backbone_weights, freeze, frozen_batch_norm, batch_norm_epsilon: as for
            :class:`~kdetect.models.faster_rcnn.FasterRCNN` (frozen batch norm by default when
            the backbone starts from weights).
        fpn_channels: width of the pyramid and the head (GroupNorm needs a multiple of 32).
        extra_levels_from: P6's input, ``"p5"`` or ``"c5"``.
        score_thresh, topk_candidates, nms_thresh, detections_per_img: the decoder.
        resize_mode, min_size, max_size: the input transform's rule.
        seed: seed of the training-time random state.
    """

    #: Constructor arguments that ``from_config`` turns back from lists into tuples.
    TUPLE_ARGUMENTS: tuple[str, ...] = ("image_size",)

    def __init__(
        self,
        num_classes: int,
        backbone: str,
        image_size: Sequence[int],
        backbone_weights: str | None,
        freeze: str | None,
        frozen_batch_norm: bool | None,
        batch_norm_epsilon: float | None,
        fpn_channels: int,
        extra_levels_from: str,
        score_thresh: float,
        topk_candidates: int,
        nms_thresh: float,
        detections_per_img: int,
        resize_mode: str,
        min_size: int,
        max_size: int,
        seed: int | None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_model_settings(num_classes, backbone, self.TYPE)
        self.transform = ImageTransform(image_size, resize_mode, min_size, max_size)
        self._keep_backbone_settings(
            num_classes, backbone, backbone_weights, freeze, frozen_batch_norm
        )
        self.batch_norm_epsilon, self.seed = batch_norm_epsilon, seed
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
        self.decoder = DenseDetectionDecoder(
            score_thresh, nms_thresh, detections_per_img, topk_candidates, name="decoder"
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._init_detector()

    def build(self, input_shape):
        self.head.build(None)
        self.built = True

    # --- The forward pass ------------------------------------------------------------------
    def pyramid(self, inputs, training=False):
        """P3..P7 of normalised images."""
        return self.fpn(self.backbone(inputs, training=training), training=training)

    def anchors(self, inputs, features):
        """The head's boxes [N_l, 4] on each level for the feature maps of this frame: every
        cell's ``anchor_sizes[l]`` x ``aspect_ratios``, cells row-major, ratios fastest."""
        sizes = [ops.shape(f)[1:3] for f in features]
        return feature_map_anchors(
            ops.shape(inputs)[1:3], sizes, self.anchor_sizes, self.aspect_ratios
        )

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(height, width) of each pyramid level for a ``height`` x ``width`` frame."""
        inputs = ops.zeros((1, int(height), int(width), 3), "float32")
        return [tuple(int(v) for v in f.shape[1:3]) for f in self.pyramid(inputs)]

    def detect(self, inputs, image_size, training=False):
        features = self.pyramid(inputs, training)
        outputs = self.head(features)
        scores, boxes = self.head.predictions(outputs, self.anchors(inputs, features))
        return self.decoder(scores, boxes, image_size=image_size)

    def compute_losses(self, images, bounding_boxes, training=True):
        """The head's loss terms of a training batch over every level, and their sum."""
        gt_boxes = ops.cast(bounding_boxes["boxes"], "float32")
        gt_labels = ops.cast(bounding_boxes["labels"], "int32")
        inputs = self.preprocess(images)
        features = self.pyramid(inputs, training)
        anchors = self.anchors(inputs, features)
        terms = self.head.losses(self.head(features), anchors, gt_boxes, gt_labels)
        return dict(zip(self.LOSS_NAMES, (sum(terms),) + tuple(terms), strict=True))

    # --- Serialisation ----------------------------------------------------------------------
    def get_config(self):
        decoder = self.decoder
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
        for key in cls.TUPLE_ARGUMENTS:
            if config.get(key) is not None:
                config[key] = tuple(config[key])
        return cls(**config)


#: The constructor arguments of :class:`PyramidDetector` (a subclass's own take the same names).
PYRAMID_ARGUMENTS = tuple(inspect.signature(PyramidDetector.__init__).parameters)[1:-1]


def pyramid_settings(arguments: Mapping) -> dict:
    """The :class:`PyramidDetector` settings among a subclass constructor's ``arguments``."""
    return {name: arguments[name] for name in PYRAMID_ARGUMENTS}
