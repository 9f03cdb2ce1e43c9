"""SSD (Liu et al., 2016) and SSDlite (Sandler et al., 2018) as ``keras.Model`` detectors.

The model is its stages: the input transform (torchvision's SSDs stretch every image to a fixed
square, ``resize_mode="fixed"``), a feature extractor giving one map per default-box level
(a backbone's maps plus extra down-sampling blocks), and :class:`~kdetect.models.ssd.heads.SSDHead`
which predicts per default box and owns matching, losses and decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from kdetect.backbones.networks import build_backbone
from kdetect.layers.batch_norm import BatchNormalization
from kdetect.models.base import DetectionModel
from kdetect.models.ssd import torchvision
from kdetect.models.ssd.heads import SSDHead, default_box_scales, default_boxes
from kdetect.models.transform import ImageTransform

LOSS_NAMES = ("loss", "cls_loss", "box_loss")
#: An argument's value meaning "the class's default" where None has its own meaning.
DEFAULT = "default"
#: The arguments that take the class's ``DEFAULTS`` when left None (or ``DEFAULT``).
_RESOLVED = (
    "backbone",
    "image_size",
    "resize_mode",
    "head_type",
    "aspect_ratios",
    "anchor_scales",
    "min_ratio",
    "max_ratio",
    "steps",
    "extra_channels",
    "score_thresh",
    "nms_thresh",
    "detections_per_img",
    "topk_candidates",
    "batch_norm_epsilon",
    "batch_norm_momentum",
)


def _is_default(value) -> bool:
    return isinstance(value, str) and value == DEFAULT


#: Backbones whose own outputs are all the levels (no extra blocks).
_COMPLETE_BACKBONES = ("torchvision_ssd_vgg16",)


def _extra_blocks(x, channels: Sequence[int], style: str, epsilon: float, momentum: float):
    """Extra down-sampling blocks after the backbone, one output each.

    ``depthwise`` (SSDlite): 1x1 conv to half the width, 3x3 depthwise conv of stride 2, 1x1 conv
    to the width, each with batch norm and ReLU6. ``conv`` (SSD): 1x1 conv to half the width and
    3x3 conv of stride 2, each with a bias and ReLU. Layers are named ``extra_{block}_{part}``.
    """
    outputs = []
    init = keras.initializers.RandomNormal(stddev=0.03)
    for block, width in enumerate(channels):
        name = f"extra_{block}"
        if style == "depthwise":
            for part, (filters, depthwise) in enumerate(
                ((width // 2, False), (None, True), (width, False))
            ):
                if depthwise:
                    x = layers.ZeroPadding2D(1, name=f"{name}_{part}_pad")(x)
                    x = layers.DepthwiseConv2D(
                        3,
                        strides=2,
                        use_bias=False,
                        depthwise_initializer=init,
                        name=f"{name}_{part}_0",
                    )(x)
                else:
                    x = layers.Conv2D(
                        filters, 1, use_bias=False, kernel_initializer=init, name=f"{name}_{part}_0"
                    )(x)
                x = BatchNormalization(epsilon=epsilon, momentum=momentum, name=f"{name}_{part}_1")(
                    x
                )
                x = layers.ReLU(6.0, name=f"{name}_{part}_relu")(x)
        else:
            x = layers.Conv2D(width // 2, 1, activation="relu", name=f"{name}_0")(x)
            x = layers.ZeroPadding2D(1, name=f"{name}_2_pad")(x)
            x = layers.Conv2D(width, 3, strides=2, activation="relu", name=f"{name}_2")(x)
        outputs.append(x)
    return outputs


@keras.saving.register_keras_serializable(package="kdetect")
class SSD(DetectionModel):
    """Single-shot detector: feature maps at several scales, a class and a box predictor per
    default box on each, decoded with per-class NMS.

    Torchvision's SSD300-VGG16 by default (``ssd300_vgg16`` holds the same options). On another
    kdetect backbone the last two of its maps are the first two levels and extra blocks
    (``extra_channels``) add the rest, one per remaining entry of ``aspect_ratios``.

    Arguments left None (or ``"default"`` for those where None has a meaning) take the
    class's ``DEFAULTS``: torchvision's builder's values; on another backbone or frame, the
    default ``steps`` and ``anchor_scales`` are None (the grid's steps; scales spread from
    ``min_ratio`` to ``max_ratio``), as torchvision's default-box generator has them. That
    range is SSDlite's 0.2..0.95 for both classes (SSD300's own scales are explicit): from
    scratch on the shapes it reaches COCO AP50 0.96 where torchvision's unused 0.15..0.9 reach
    0.83 in the same steps.

    Args:
        num_classes: object classes (the background is added internally, first).
        backbone: a kdetect backbone name (``torchvision_ssd_vgg16`` gives all six levels).
        image_size: ``(height, width)`` of the frame.
        resize_mode: ``fixed`` (stretch to ``image_size``, torchvision's) or ``fit`` (see
            :class:`~kdetect.models.transform.ImageTransform`); the frame is always
            ``image_size``, which the default boxes are computed for.
        head_type: ``conv`` (SSD's 3x3 predictors) or ``depthwise`` (SSDlite's).
        aspect_ratios: per level, the aspect ratios beyond the two squares.
        anchor_scales: the scale of each level plus one more; None spreads them from
            ``min_ratio`` to ``max_ratio``.
        steps: per level, the pixel step of its cells; None uses the grid size.
        clip: clip default boxes' relative sizes to [0, 1].
        extra_channels: widths of the extra blocks (backbones other than SSD's VGG16).
        score_thresh, nms_thresh, detections_per_img, topk_candidates, iou_thresh,
            positive_fraction, bbox_reg_weights: decoding and training settings (torchvision's
            names and defaults).
        batch_norm_epsilon: epsilon of the backbone's, extra blocks' and heads' batch norms
            (None: the backbone's own; 1e-3 elsewhere).
        batch_norm_momentum: Keras momentum of those batch norms (torch's is ``1 - this``);
            None keeps Keras' own.
        backbone_weights: None, ``imagenet`` or a weights file (Keras application backbones).
        seed: seed of the model's random draws.
    """

    LOSS_NAMES = LOSS_NAMES
    TYPE = "ssd"
    TORCHVISION = torchvision
    TORCHVISION_ARCHITECTURES = {"ssd300_vgg16": torchvision.ARCHITECTURES["ssd300_vgg16"]}
    #: The constructor's defaults: torchvision's for this type, with the default boxes' range
    #: off its layout as SSDlite's (see the class docstring).
    DEFAULTS = {**torchvision.ARCHITECTURES["ssd300_vgg16"], "min_ratio": 0.2, "max_ratio": 0.95}

    def __init__(
        self,
        num_classes: int,
        backbone: str | None = None,
        image_size: Sequence[int] | None = None,
        resize_mode: str | None = None,
        head_type: str | None = None,
        aspect_ratios: Sequence[Sequence[float]] | None = None,
        anchor_scales: Sequence[float] | str | None = DEFAULT,
        min_ratio: float | None = None,
        max_ratio: float | None = None,
        steps: Sequence[float] | str | None = DEFAULT,
        clip: bool = True,
        extra_channels: Sequence[int] | None = None,
        score_thresh: float | None = None,
        nms_thresh: float | None = None,
        detections_per_img: int | None = None,
        topk_candidates: int | None = None,
        iou_thresh: float = 0.5,
        positive_fraction: float = 0.25,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        batch_norm_epsilon: float | str | None = DEFAULT,
        batch_norm_momentum: float | str | None = DEFAULT,
        backbone_weights: str | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        given = {key: value for key, value in locals().items() if key in _RESOLVED}
        settings = {
            key: self.DEFAULTS.get(key) if value is None or _is_default(value) else value
            for key, value in given.items()
        }
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        if settings["resize_mode"] not in ("fixed", "fit"):
            raise ValueError(
                f"resize_mode: {type(self).__name__} takes 'fixed' or 'fit' (its default boxes "
                f"need one static frame), got {settings['resize_mode']!r}"
            )
        self.backbone_name = settings["backbone"]
        self.transform = ImageTransform(
            settings["image_size"], settings["resize_mode"], size_divisible=1
        )
        self.head_type = settings["head_type"]
        self.aspect_ratios = tuple(
            tuple(float(r) for r in level) for level in settings["aspect_ratios"]
        )
        levels = len(self.aspect_ratios)
        own_layout = (settings["backbone"], tuple(settings["image_size"])) == (
            self.DEFAULTS["backbone"],
            tuple(self.DEFAULTS["image_size"]),
        )
        if not own_layout:
            # torchvision's pixel steps and explicit scales belong to its backbone at its frame;
            # elsewhere the default boxes follow the grid, scaled from min_ratio to max_ratio.
            anchor_scales = None if _is_default(anchor_scales) else anchor_scales
            steps = None if _is_default(steps) else steps
        scales = settings["anchor_scales"] if _is_default(anchor_scales) else anchor_scales
        self.min_ratio = float(settings["min_ratio"])
        self.max_ratio = float(settings["max_ratio"])
        self.anchor_scales = None if scales is None else tuple(float(s) for s in scales)
        self.scales = list(
            self.anchor_scales or default_box_scales(levels, self.min_ratio, self.max_ratio)
        )
        if len(self.scales) != levels + 1:
            raise ValueError(f"anchor_scales: need {levels + 1} scales, got {len(self.scales)}")
        step_values = settings["steps"] if _is_default(steps) else steps
        self.steps = None if step_values is None else tuple(float(s) for s in step_values)
        self.clip = bool(clip)
        self.extra_channels = tuple(int(c) for c in settings["extra_channels"])
        self.batch_norm_epsilon = settings["batch_norm_epsilon"]
        self.batch_norm_momentum = settings["batch_norm_momentum"]
        self.backbone_weights, self.seed = backbone_weights, seed
        epsilon = 1e-3 if self.batch_norm_epsilon is None else float(self.batch_norm_epsilon)
        momentum = 0.99 if self.batch_norm_momentum is None else float(self.batch_norm_momentum)

        # --- Layers with weights: feature extractor and head ------------------------------
        features, _ = build_backbone(
            self.backbone_name,
            tuple(self.image_size) + (3,),
            weights=backbone_weights,
            batch_norm_epsilon=self.batch_norm_epsilon,
        )
        self.backbone = features
        inputs = keras.Input((None, None, 3))
        maps = list(features(inputs))
        if self.backbone_name not in _COMPLETE_BACKBONES:
            maps = maps[-2:]
            count = levels - len(maps)
            if count > len(self.extra_channels):
                raise ValueError(
                    f"extra_channels: {levels} levels need {count} extra blocks, got "
                    f"{len(self.extra_channels)} widths"
                )
            style = "depthwise" if self.head_type == "depthwise" else "conv"
            maps += _extra_blocks(maps[-1], self.extra_channels[:count], style, epsilon, momentum)
        if len(maps) != levels:
            raise ValueError(f"aspect_ratios: {len(maps)} feature maps need {len(maps)} levels")
        self.extractor = keras.Model(inputs, maps, name="extractor")
        if self.batch_norm_momentum is not None:
            for layer in self.extractor.layers + features.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = momentum
        self.head = SSDHead(
            self.num_classes,
            [2 + 2 * len(r) for r in self.aspect_ratios],
            head_type=self.head_type,
            score_thresh=settings["score_thresh"],
            nms_thresh=settings["nms_thresh"],
            detections_per_img=settings["detections_per_img"],
            topk_candidates=settings["topk_candidates"],
            iou_thresh=iou_thresh,
            positive_fraction=positive_fraction,
            bbox_reg_weights=bbox_reg_weights,
            batch_norm_epsilon=epsilon,
            batch_norm_momentum=momentum,
            name="head",
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._init_detector()
        spec = self.extractor.compute_output_spec(keras.KerasTensor((1,) + self.image_size + (3,)))
        self._feature_shapes = [tuple(t.shape) for t in spec]
        self.build((None,) + self.image_size + (3,))

    def build(self, input_shape):
        self.head.build([(None,) + s[1:] for s in self._feature_shapes])
        self.built = True

    # --- Forward ----------------------------------------------------------------------------
    def feature_maps(self, inputs, training=False):
        """One map per default-box level, for normalised images."""
        return self.extractor(inputs, training=training)

    def default_boxes(self, frame, features):
        """Default boxes [A, 4] of a frame (height, width) and its feature maps (static)."""
        sizes = [tuple(int(v) for v in f.shape[1:3]) for f in features]
        frame = tuple(int(v) for v in frame)
        return default_boxes(frame, sizes, self.scales, self.aspect_ratios, self.steps, self.clip)

    def anchor_boxes(self, height: int, width: int, anchor_sizes=None, aspect_ratios=None):
        """The default boxes of a ``height`` x ``width`` frame, as one level (see
        :meth:`DetectionModel.anchor_boxes`); they are not a grid of sizes and ratios, so no
        other setting is offered."""
        if anchor_sizes is not None or aspect_ratios is not None:
            raise NotImplementedError("SSD's default boxes come from scales, not anchor sizes")
        features = self.feature_maps(ops.zeros((1, int(height), int(width), 3), "float32"))
        return [ops.convert_to_numpy(self.default_boxes((height, width), features))]

    @property
    def anchor_iou_thresholds(self) -> tuple[float, float]:
        """Default boxes at IoU >= ``iou_thresh`` are positives, the rest negatives."""
        return self.head.iou_thresh, self.head.iou_thresh

    def _frame(self, inputs):
        shape = tuple(inputs.shape[1:3])
        return shape if None not in shape else self.image_size

    def detect(self, inputs, image_size, training=False):
        features = self.feature_maps(inputs, training=training)
        logits, deltas = self.head(features, training=training)
        anchors = self.default_boxes(self._frame(inputs), features)
        return self.head.decode(logits, deltas, anchors, image_size)

    def compute_losses(self, images, bounding_boxes, training=True):
        """Class and box losses of the head over the batch's default boxes, and their sum."""
        gt_boxes = ops.cast(bounding_boxes["boxes"], "float32")
        gt_labels = ops.cast(bounding_boxes["labels"], "int32")
        inputs = self.preprocess(images)
        features = self.feature_maps(inputs, training=training)
        logits, deltas = self.head(features, training=training)
        anchors = self.default_boxes(self._frame(inputs), features)
        cls_loss, box_loss = self.head.losses(logits, deltas, anchors, gt_boxes, gt_labels)
        return {"loss": cls_loss + box_loss, "cls_loss": cls_loss, "box_loss": box_loss}

    # --- Serialisation --------------------------------------------------------------------
    def get_config(self):
        head = self.head
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "backbone": self.backbone_name,
            "image_size": self.image_size,
            "resize_mode": self.resize_mode,
            "head_type": self.head_type,
            "aspect_ratios": self.aspect_ratios,
            "anchor_scales": self.anchor_scales,
            "min_ratio": self.min_ratio,
            "max_ratio": self.max_ratio,
            "steps": self.steps,
            "clip": self.clip,
            "extra_channels": self.extra_channels,
            "score_thresh": head.score_thresh,
            "nms_thresh": head.nms_thresh,
            "detections_per_img": head.detections_per_img,
            "topk_candidates": head.topk_candidates,
            "iou_thresh": head.iou_thresh,
            "positive_fraction": head.positive_fraction,
            "bbox_reg_weights": head.bbox_reg_weights,
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "batch_norm_momentum": self.batch_norm_momentum,
            "backbone_weights": None,  # weights travel in the saved file
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="kdetect")
class SSDLite(SSD):
    """SSDlite: :class:`SSD` with depthwise-separable predictors and extra blocks, on
    MobileNetV3-Large by default (torchvision's ``ssdlite320_mobilenet_v3_large``)."""

    TYPE = "ssdlite"
    TORCHVISION_ARCHITECTURES = {
        "ssdlite320_mobilenet_v3_large": torchvision.ARCHITECTURES["ssdlite320_mobilenet_v3_large"]
    }
    DEFAULTS = torchvision.ARCHITECTURES["ssdlite320_mobilenet_v3_large"]
