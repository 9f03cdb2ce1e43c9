"""FCOS (Tian et al., 2019) as a ``keras.Model``: an anchor-free single-stage detector.

The same P3..P7 pyramid and decoder as RetinaNet (:class:`~kdetect.models.pyramid.
PyramidDetector`); one location per cell of each level (a square "anchor" of the
level's size gives its centre and scale); the head
(:class:`~kdetect.models.fcos.head.FCOSHead`) predicts class scores, the four side distances
of a box and its centre-ness; scores are ``sqrt(sigmoid(class) * sigmoid(centre-ness))``,
decoded by the shared dense decoder (:class:`~kdetect.layers.dense.DenseDetectionDecoder`).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from kdetect.models.fcos import torchvision
from kdetect.models.fcos.head import FCOSHead
from kdetect.models.pyramid import PyramidDetector, pyramid_settings

LOSS_NAMES = ("loss", "cls_loss", "box_loss", "centerness_loss")
DEFAULT_ANCHOR_SIZES = (8.0, 16.0, 32.0, 64.0, 128.0)


@keras.saving.register_keras_serializable(package="kdetect")
class FCOS(PyramidDetector):
    """Anchor-free detector: backbone -> FPN (P3..P7) -> class / box+centre-ness towers.

    Args:
        num_classes, backbone, image_size, backbone_weights, freeze, frozen_batch_norm,
            batch_norm_epsilon, fpn_channels, extra_levels_from, score_thresh,
            topk_candidates, nms_thresh, detections_per_img, resize_mode, min_size, max_size,
            seed: as for :class:`~kdetect.models.pyramid.PyramidDetector`.
        anchor_sizes: the location size of each level P3..P7 (its assignment scale and the
            unit of its distances): five numbers, or five one-size lists.
        center_sampling_radius, focal_alpha, focal_gamma, head_conv_depth: the head.
    """

    LOSS_NAMES = LOSS_NAMES
    TYPE = "fcos"
    TORCHVISION = torchvision
    TORCHVISION_ARCHITECTURES = torchvision.ARCHITECTURES
    #: One square location per cell.
    aspect_ratios = (1.0,)

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
        levels = [s if isinstance(s, Sequence) else (s,) for s in anchor_sizes]
        if len(levels) != 5 or any(len(level) != 1 for level in levels):
            raise ValueError(f"anchor_sizes needs one size for each of P3..P7, got {anchor_sizes}")
        super().__init__(**pyramid_settings(locals()), **kwargs)
        self.anchor_sizes = tuple((float(level[0]),) for level in levels)
        self.head = FCOSHead(
            self.num_classes,
            fpn_channels,
            conv_depth=head_conv_depth,
            center_sampling_radius=center_sampling_radius,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            name="head",
        )
        self.build((None,) + self.image_size + (3,))

    def get_config(self):
        head = self.head
        return {
            **super().get_config(),
            "anchor_sizes": tuple(level[0] for level in self.anchor_sizes),
            "head_conv_depth": head.conv_depth,
            "center_sampling_radius": head.center_sampling_radius,
            "focal_alpha": head.focal_alpha,
            "focal_gamma": head.focal_gamma,
        }
