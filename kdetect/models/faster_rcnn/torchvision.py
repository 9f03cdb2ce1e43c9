"""torchvision's Faster R-CNN checkpoints: the options of each architecture and the map from
its keys to :class:`~kdetect.models.faster_rcnn.FasterRCNN`'s weights.

Each architecture's options reproduce torchvision's builder exactly: its ResNet50 (v1.5) or
MobileNetV3 with frozen batch norm of the checkpoint's epsilon, RoIAlign with ``aligned=False``,
the ``min_max`` resize (800 / 1333, each image at its own frame padded to 32), anchors, RPN and
box-head settings at torchvision's defaults. Besides the shared converters
(:mod:`kdetect.pretrained.torchvision`):

* the first box-head layer (``fc6``) reads a RoI flattened channel-major (C, 7, 7) in torch and
  (7, 7, C) in kdetect, so its input rows are permuted;
* torchvision's label 0 is the background: the class logits keep it first (as kdetect does),
  and the box deltas of label 0, which kdetect does not predict, are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kdetect.layers import ConvFCBoxHead
from kdetect.plumbing.errors import CheckpointError
from kdetect.pretrained.torchvision import WeightPlan, linear_kernel

#: ``FasterRCNN`` options of each importable torchvision architecture.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "fasterrcnn_resnet50_fpn": {
        "backbone": "torchvision_resnet50",
        "fpn": True,
        "frozen_batch_norm": True,
        "batch_norm_epsilon": 0.0,  # torchvision loads COCO_V1 with overwrite_eps(model, 0.0)
        "freeze": "stage1",  # torchvision's default trainable_backbone_layers=3
        "roi_align_aligned": False,
        "resize_mode": "min_max",
        "min_size": 800,
        "max_size": 1333,
        "image_size": (800, 1344),  # the training frame; predict uses min_max
    },
    "fasterrcnn_resnet50_fpn_v2": {
        "backbone": "torchvision_resnet50",
        "fpn": True,
        "fpn_batch_norm": True,
        "rpn_conv_depth": 2,
        "box_head_type": "conv_fc",
        "frozen_batch_norm": False,  # v2 trains its batch norms
        "batch_norm_epsilon": 1e-5,
        "freeze": "stage1",
        "roi_align_aligned": False,
        "resize_mode": "min_max",
        "min_size": 800,
        "max_size": 1333,
        "image_size": (800, 1344),
    },
    "fasterrcnn_mobilenet_v3_large_fpn": {
        "backbone": "torchvision_mobilenet_v3_large",
        "fpn": True,
        "frozen_batch_norm": True,
        "batch_norm_epsilon": 1e-5,
        "freeze": "stage2",  # torchvision's default trainable_backbone_layers=3
        "anchor_sizes": ((32.0, 64.0, 128.0, 256.0, 512.0),) * 3,
        "rpn_score_thresh": 0.05,
        "roi_align_aligned": False,
        "resize_mode": "min_max",
        "min_size": 800,
        "max_size": 1333,
        "image_size": (800, 1344),
    },
}

#: torchvision's published COCO weights of each architecture: (weights enum, file, box AP).
PUBLISHED_WEIGHTS = {
    "fasterrcnn_resnet50_fpn": (
        "FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
        "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
        37.0,
    ),
    "fasterrcnn_resnet50_fpn_v2": (
        "FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1",
        "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
        46.7,
    ),
    "fasterrcnn_mobilenet_v3_large_fpn": (
        "FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1",
        "https://download.pytorch.org/models/fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
        32.8,
    ),
}

_CLASS_LOGITS_KEY = "roi_heads.box_predictor.cls_score.weight"


def num_classes(state: dict, name: str, arch: str | None = None) -> int:
    """The foreground classes of a Faster R-CNN state dict (its class logits less the
    background)."""
    if _CLASS_LOGITS_KEY not in state or np.ndim(state[_CLASS_LOGITS_KEY]) != 2:
        raise CheckpointError(
            f"{name}: not a torchvision Faster R-CNN checkpoint (no {_CLASS_LOGITS_KEY})"
        )
    count = int(state[_CLASS_LOGITS_KEY].shape[0]) - 1
    if count < 1:
        raise CheckpointError(f"{name}: {_CLASS_LOGITS_KEY} has no foreground class")
    return count


def weight_plan(model) -> WeightPlan:
    """torchvision key -> (kdetect variable, converter) for every weight of ``model``."""
    plan = WeightPlan()
    plan.backbone("backbone.body.", model.backbone)
    _plan_fpn_and_rpn(plan, model)
    _plan_box_head(plan, model)
    return plan


def _flattened_chw(channels: int, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Converter of a linear layer reading a RoI flattened channel-major (torch) for one reading
    it channel-last (kdetect)."""

    def convert(w):  # [units, C * S * S] channel-major -> [S * S * C, units] channel-last
        units = w.shape[0]
        w = w.reshape(units, channels, size, size).transpose(2, 3, 1, 0)
        return w.reshape(size * size * channels, units)

    return convert


def _plan_fpn_and_rpn(plan: WeightPlan, model) -> None:
    fpn = model.fpn
    for i in range(len(fpn.lateral_convs)):
        for kind, convs, norms in (
            ("inner_blocks", fpn.lateral_convs, fpn.lateral_norms),
            ("layer_blocks", fpn.output_convs, fpn.output_norms),
        ):
            plan.conv(f"backbone.fpn.{kind}.{i}.", convs[i])  # (pre-0.13 spelling of {i}.0.)
            if norms[i] is not None:
                plan.batch_norm(f"backbone.fpn.{kind}.{i}.1.", norms[i])
    plan.conv("rpn.head.conv.", model.rpn_head.conv)
    for depth, extra in enumerate(model.rpn_head.extra_convs, start=1):
        plan.conv(f"rpn.head.conv.{depth}.0.", extra)
    plan.conv("rpn.head.cls_logits.", model.rpn_head.objectness)
    plan.conv("rpn.head.bbox_pred.", model.rpn_head.box_deltas)


def _plan_box_head(plan: WeightPlan, model) -> None:
    size = model.roi_align.output_size
    head = model.box_head
    if isinstance(head, ConvFCBoxHead):  # Sequential: convs, Flatten, (Linear, ReLU) * n
        for index, (layer, norm) in enumerate(zip(head.convs, head.norms)):
            plan.conv(f"roi_heads.box_head.{index}.0.", layer)
            plan.batch_norm(f"roi_heads.box_head.{index}.1.", norm)
        channels = head.conv_channels[-1]
        for j, fc in enumerate(head.fcs):
            index = len(head.convs) + 1 + 2 * j
            weight = _flattened_chw(channels, size) if j == 0 else linear_kernel
            plan.linear(f"roi_heads.box_head.{index}.", fc, weight=weight)
    else:
        fc6 = _flattened_chw(model.fpn_channels, size)
        plan.linear("roi_heads.box_head.fc6.", head.fc1, weight=fc6)
        plan.linear("roi_heads.box_head.fc7.", head.fc2)
    plan.linear("roi_heads.box_predictor.cls_score.", model.box_predictor.cls_score)
    plan.linear(
        "roi_heads.box_predictor.bbox_pred.",
        model.box_predictor.bbox_pred,
        weight=lambda w: np.transpose(w[4:]),  # drop the background's deltas
        bias=lambda b: b[4:],
    )
