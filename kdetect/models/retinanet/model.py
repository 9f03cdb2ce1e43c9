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

from kdetect.models.pyramid import PyramidDetector, pyramid_settings
from kdetect.models.retinanet import torchvision
from kdetect.models.retinanet.head import RetinaNetHead

LOSS_NAMES = ("loss", "cls_loss", "box_loss")
#: Three octave scales per level, truncated to whole pixels as torchvision's builder does.
DEFAULT_ANCHOR_SIZES = tuple(
    (float(x), float(int(x * 2 ** (1 / 3))), float(int(x * 2 ** (2 / 3))))
    for x in (32, 64, 128, 256, 512)
)


@keras.saving.register_keras_serializable(package="kdetect")
class RetinaNet(PyramidDetector):
    """Single-stage detector: backbone -> FPN (P3..P7) -> class / box towers -> dense decoder.

    Training batches and prediction follow :class:`~kdetect.models.base.DetectionModel`;
    ``fit`` optimises the focal classification loss plus the box loss and reports each.

    Args:
        num_classes, backbone, image_size, backbone_weights, freeze, frozen_batch_norm,
            batch_norm_epsilon, fpn_channels, score_thresh, topk_candidates, nms_thresh,
            detections_per_img, resize_mode, min_size, max_size, seed: as for
            :class:`~kdetect.models.pyramid.PyramidDetector`.
        extra_levels_from: ``"p5"`` (RetinaNet) or ``"c5"`` (torchvision's v2): P6's input.
        anchor_sizes: one tuple of sizes per level P3..P7 (default three octave scales of
            32..512); aspect_ratios: height / width ratios of every level.
        head_group_norm: GroupNorm(32) in the head's towers (v2's, and kdetect's default: it
            trains several times faster from scratch; v1 has none); head_conv_depth: their
            convs.
        box_loss: ``l1`` on encoded deltas (v1) or ``giou`` on decoded boxes (v2).
        fg_iou_thresh, bg_iou_thresh: anchor matching; focal_alpha, focal_gamma: focal loss.
    """

    LOSS_NAMES = LOSS_NAMES
    TYPE = "retinanet"
    TORCHVISION = torchvision
    TORCHVISION_ARCHITECTURES = torchvision.ARCHITECTURES
    TUPLE_ARGUMENTS = ("image_size", "aspect_ratios")

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
        head_group_norm: bool = True,
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
        anchor_sizes = tuple(
            tuple(float(s) for s in level) for level in (anchor_sizes or DEFAULT_ANCHOR_SIZES)
        )
        if len(anchor_sizes) != 5 or len({len(s) for s in anchor_sizes}) != 1:
            raise ValueError("anchor_sizes needs five tuples (P3..P7) of one length")
        super().__init__(**pyramid_settings(locals()), **kwargs)
        self.anchor_sizes = anchor_sizes
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
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
        self.build((None,) + self.image_size + (3,))

    @property
    def anchor_iou_thresholds(self) -> tuple[float, float]:
        """The head's ``(fg_iou_thresh, bg_iou_thresh)``."""
        return self.head.fg_iou_thresh, self.head.bg_iou_thresh

    def get_config(self):
        head = self.head
        return {
            **super().get_config(),
            "anchor_sizes": self.anchor_sizes,
            "aspect_ratios": self.aspect_ratios,
            "head_group_norm": head.group_norm,
            "head_conv_depth": head.conv_depth,
            "box_loss": head.box_loss,
            "fg_iou_thresh": head.fg_iou_thresh,
            "bg_iou_thresh": head.bg_iou_thresh,
            "focal_alpha": head.focal_alpha,
            "focal_gamma": head.focal_gamma,
        }

    @classmethod
    def from_torchvision(cls, weights, arch: str | None = None, **overrides):
        """:meth:`DetectionModel.from_torchvision`; the published v1 file's pre-0.13 names of
        the head's convs are read too."""
        return super().from_torchvision(torchvision.with_modern_names(weights), arch, **overrides)
