"""Assembling a Faster R-CNN from its settings: checks, the layers with weights, the defaults.

``FasterRCNN.__init__`` reads as a list of parts; the work of turning plain settings into
checked values and layers lives here, so that each rule is written once.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from kdetect.backbones.networks import build_backbone, resnet_stage5_head
from kdetect.layers import (
    ConvFCBoxHead,
    DetectionDecoder,
    FeaturePyramid,
    MLPBoxHead,
    MultiLevelRoIAlign,
    ProposalGenerator,
    RoISampler,
    RPNTargetAssigner,
)
from kdetect.models.base import check_model_settings
from kdetect.ops.boxes import BoxCoder

BOX_HEAD_TYPES = ("mlp", "conv_fc")
#: Config keys holding tuples, which a saved (JSON) config turns into lists.
_TUPLE_KEYS = ("aspect_ratios", "bbox_reg_weights")


def check_settings(num_classes, box_head_type, backbone: str) -> None:
    """Raise ``TypeError`` / ``ValueError`` for settings no detector can be built with (the
    input transform checks its own: :class:`~kdetect.models.transform.ImageTransform`)."""
    check_model_settings(num_classes, backbone, "faster_rcnn")
    if box_head_type not in BOX_HEAD_TYPES:
        raise ValueError(f"box_head_type must be one of {BOX_HEAD_TYPES}, got {box_head_type!r}")


@dataclass
class FeatureLayers:
    """The backbone (+ pyramid) of a detector and what the later stages need to know of it."""

    backbone: keras.Model  # normalised images -> C2..C5 (pyramid) or C4
    full: keras.Model  # the whole backbone network (its stage 5 is a C4 ResNet's box head)
    fpn: FeaturePyramid | None
    rpn_channels: int
    rpn_levels: int
    roi_strides: tuple[int, ...]  # stride of each map RoIs are pooled from
    roi_levels: list[int] | None  # which pyramid outputs those maps are


def build_feature_layers(
    backbone: str,
    fpn: bool,
    image_size: tuple[int, int],
    fpn_channels: int,
    fpn_batch_norm: bool,
    **backbone_options,
) -> FeatureLayers:
    """The backbone cut for a pyramid (all of C2..C5) or for C4, and the pyramid itself.

    ``backbone_options``: ``weights``, ``freeze``, ``frozen_batch_norm``, ``batch_norm_epsilon``
    of :func:`kdetect.backbones.networks.build_backbone`.
    """
    features, full = build_backbone(backbone, image_size + (3,), **backbone_options)
    if fpn:
        # Strides of the maps the pyramid is built on: C2..C5 (4..32) for most backbones;
        # torchvision's MobileNetV3 detector uses two stride-32 maps.
        spec = features.compute_output_spec(keras.KerasTensor((1,) + image_size + (3,)))
        strides = tuple(image_size[0] // t.shape[1] for t in spec)
        pyramid = FeaturePyramid(
            fpn_channels, batch_norm=fpn_batch_norm, input_strides=strides, name="fpn"
        )
        # RoIs are pooled from the first map of each stride (torchvision's level mapper spans
        # the distinct strides only); the RPN also sees the pyramid's subsampled top.
        roi_strides = tuple(sorted(set(strides)))
        roi_levels = [strides.index(stride) for stride in roi_strides]
        return FeatureLayers(
            features, full, pyramid, fpn_channels, len(strides) + 1, roi_strides, roi_levels
        )
    if len(features.outputs) < 4:
        raise ValueError(f"backbone '{backbone}' needs fpn=True")
    c4 = keras.Model(full.inputs, features.outputs[2], name=f"{backbone}_c4")
    return FeatureLayers(c4, full, None, features.output_shape[2][-1], 1, (16,), None)


def is_c4_resnet(backbone: str, fpn: bool) -> bool:
    """A ResNet without pyramid pools 14x14 RoIs and runs its own stage 5 as the box head."""
    return not fpn and backbone.startswith("resnet")


def build_box_head(parts: FeatureLayers, backbone: str, box_head_type: str, units: int):
    """The layers between RoIAlign and the predictor (C4 ResNets: their own stage 5)."""
    if is_c4_resnet(backbone, parts.fpn is not None):
        return resnet_stage5_head(parts.full, backbone)
    if box_head_type == "conv_fc":
        return ConvFCBoxHead(units=(units,), name="box_head")
    return MLPBoxHead(units, name="box_head")


def box_head_width(box_head) -> int:
    """Width of the features the box head gives the predictor."""
    if isinstance(box_head, MLPBoxHead):
        return box_head.units
    if isinstance(box_head, ConvFCBoxHead):
        return box_head.output_units
    return box_head.output_shape[-1]


def build_stages(settings: dict, roi_strides: tuple[int, ...], c4_resnet: bool) -> dict:
    """The weightless stages (:data:`STAGES`) from ``FasterRCNN``'s arguments ``settings``: a
    stage given there (not None) is kept, the others are built from the plain ``rpn_*`` /
    ``box_*`` / ``bbox_reg_weights`` / ``roi_align_aligned`` settings (:func:`stage_settings`
    reads them back). An injected RoIAlign must pool from the backbone's ``roi_strides``."""
    rpn = {k.removeprefix("rpn_"): v for k, v in settings.items() if k.startswith("rpn_")}
    box = {k.removeprefix("box_"): v for k, v in settings.items() if k.startswith("box_")}
    rpn_coder, roi_coder = BoxCoder((1.0, 1.0, 1.0, 1.0)), BoxCoder(settings["bbox_reg_weights"])
    builders = {
        "rpn_target_assigner": lambda: RPNTargetAssigner(
            rpn["fg_iou_thresh"], rpn["bg_iou_thresh"], rpn["batch_size_per_image"],
            rpn["positive_fraction"], rpn_coder, name="rpn_target_assigner",
        ),
        "proposal_generator": lambda: ProposalGenerator(
            rpn["pre_nms_top_n_test"], rpn["post_nms_top_n_test"], rpn["nms_thresh"],
            score_thresh=rpn["score_thresh"], box_coder=rpn_coder,
            pre_nms_top_n_train=rpn["pre_nms_top_n_train"],
            post_nms_top_n_train=rpn["post_nms_top_n_train"], name="proposal_generator",
        ),
        "roi_align": lambda: MultiLevelRoIAlign(
            roi_strides, 2 * box["roi_pool_size"] if c4_resnet else box["roi_pool_size"],
            box["sampling_ratio"], aligned=settings["roi_align_aligned"], name="roi_align",
        ),
        "roi_sampler": lambda: RoISampler(
            box["fg_iou_thresh"], box["bg_iou_thresh"], box["batch_size_per_image"],
            box["positive_fraction"], roi_coder, name="roi_sampler",
        ),
        "detection_decoder": lambda: DetectionDecoder(
            box["score_thresh"], box["nms_thresh"], box["detections_per_img"],
            box_coder=roi_coder, name="detection_decoder",
        ),
    }  # fmt: skip
    stages = {name: settings.get(name) or build() for name, build in builders.items()}
    if tuple(stages["roi_align"].strides) != roi_strides:
        raise ValueError(
            f"roi_align pools from strides {tuple(stages['roi_align'].strides)}; this "
            f"backbone's RoI maps have strides {roi_strides}"
        )
    return stages


def stage_settings(model, c4_resnet: bool) -> dict:
    """The plain ``rpn_*`` / ``box_*`` settings of a built detector, read from its layers (where
    each lives once), under the names of ``FasterRCNN``'s arguments."""
    targets, proposals = model.rpn_target_assigner, model.proposal_generator
    align, sampler, decoder = model.roi_align, model.roi_sampler, model.detection_decoder
    return {
        "rpn_pre_nms_top_n_train": proposals.pre_nms_top_n_train,
        "rpn_pre_nms_top_n_test": proposals.pre_nms_top_n,
        "rpn_post_nms_top_n_train": proposals.post_nms_top_n_train,
        "rpn_post_nms_top_n_test": proposals.post_nms_top_n,
        "rpn_nms_thresh": proposals.nms_thresh,
        "rpn_fg_iou_thresh": targets.fg_iou_thresh,
        "rpn_bg_iou_thresh": targets.bg_iou_thresh,
        "rpn_batch_size_per_image": targets.batch_size_per_image,
        "rpn_positive_fraction": targets.positive_fraction,
        "rpn_score_thresh": proposals.score_thresh,
        "rpn_conv_depth": model.rpn_head.conv_depth,
        "box_roi_pool_size": align.output_size // 2 if c4_resnet else align.output_size,
        "box_sampling_ratio": align.sampling_ratio,
        "box_head_units": model.box_head_units,
        "box_head_type": model.box_head_type,
        "box_score_thresh": decoder.score_thresh,
        "box_nms_thresh": decoder.nms_thresh,
        "box_detections_per_img": decoder.detections_per_img,
        "box_fg_iou_thresh": sampler.fg_iou_thresh,
        "box_bg_iou_thresh": sampler.bg_iou_thresh,
        "box_batch_size_per_image": sampler.batch_size_per_image,
        "box_positive_fraction": sampler.positive_fraction,
        "bbox_reg_weights": decoder.box_coder.weights,
        "roi_align_aligned": align.aligned,
    }


def normalised_config(config: dict) -> dict:
    """A saved config's lists back to the tuples ``FasterRCNN`` keeps, its layers deserialised."""
    config = dict(config)
    for key in _TUPLE_KEYS:
        if config.get(key) is not None:
            config[key] = tuple(config[key])
    if config.get("anchor_sizes") is not None:
        config["anchor_sizes"] = tuple(tuple(level) for level in config["anchor_sizes"])
    for key in STAGES:
        if isinstance(config.get(key), dict):
            config[key] = keras.saving.deserialize_keras_object(config[key])
    return config


#: The weightless stages a ``FasterRCNN`` can be given instead of building them from its plain
#: settings (the constructor's keyword arguments and attribute names).
STAGES = (
    "rpn_target_assigner",
    "proposal_generator",
    "roi_align",
    "roi_sampler",
    "detection_decoder",
)
