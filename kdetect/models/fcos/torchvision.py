"""torchvision's FCOS checkpoint: the options of ``fcos_resnet50_fpn`` and the map from its keys
to :class:`~kdetect.models.fcos.FCOS`'s weights.

torchvision's ResNet50 with frozen batch norm (epsilon 1e-5: its COCO file is loaded without
changing it), C3..C5 feeding the pyramid with P6 from P5, the ``min_max`` resize (800 / 1333)
and the head and decoder at torchvision's defaults. The head's towers are
``conv.{3i}`` convs and ``conv.{3i + 1}`` group norms; label 0's class logit is dropped.
"""

from __future__ import annotations

from typing import Any

from kdetect.models.retinanet import torchvision as retinanet
from kdetect.pretrained.torchvision import WeightPlan

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "fcos_resnet50_fpn": {
        "backbone": "torchvision_resnet50",
        "freeze": "stage1",  # torchvision's default trainable_backbone_layers=3
        "frozen_batch_norm": True,
        "batch_norm_epsilon": 1e-5,
        "extra_levels_from": "p5",
        "resize_mode": "min_max",
        "min_size": 800,
        "max_size": 1333,
        "image_size": (800, 1344),  # the training frame; predict uses min_max
    },
}

#: torchvision's published COCO weights: (weights enum, file, box AP).
PUBLISHED_WEIGHTS = {
    "fcos_resnet50_fpn": (
        "FCOS_ResNet50_FPN_Weights.COCO_V1",
        "https://download.pytorch.org/models/fcos_resnet50_fpn_coco-99b0c9b7.pth",
        39.2,
    ),
}


def num_classes(state: dict, name: str, arch: str) -> int:
    """The foreground classes of an FCOS state dict (one location per cell)."""
    return retinanet.num_classes(state, name, arch, anchors_per_location=1)


def _plan_tower(plan: WeightPlan, prefix: str, convs, norms) -> None:
    for i, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
        plan.conv(f"{prefix}conv.{3 * i}.", conv)
        plan.group_norm(f"{prefix}conv.{3 * i + 1}.", norm)


def weight_plan(model) -> WeightPlan:
    """torchvision key -> (kdetect variable, converter) for every weight of ``model``."""
    plan = WeightPlan()
    plan.backbone("backbone.body.", model.backbone)
    retinanet.plan_pyramid(plan, model.fpn)
    head = model.head
    _plan_tower(plan, "head.classification_head.", head.cls_convs, head.cls_norms)
    _plan_tower(plan, "head.regression_head.", head.box_convs, head.box_norms)
    weight, bias = retinanet.drop_label_zero(1)
    plan.linear("head.classification_head.cls_logits.", head.cls_logits, weight=weight, bias=bias)
    plan.conv("head.regression_head.bbox_reg.", head.bbox_reg)
    plan.conv("head.regression_head.bbox_ctrness.", head.bbox_ctrness)
    return plan
