"""torchvision's RetinaNet checkpoints: the options of each architecture and the map from its
keys to :class:`~kdetect.models.retinanet.RetinaNet`'s weights.

Both architectures use torchvision's ResNet50 with C3..C5 feeding the pyramid, the ``min_max``
resize (800 / 1333) and the head and decoder at torchvision's defaults; ``v1`` runs frozen batch
norm with epsilon 0 (its COCO file is loaded so), P6 from P5 and the L1 box loss; ``v2`` batch
norm of epsilon 1e-5, P6 from C5, GroupNorm in the head and the GIoU box loss.

torchvision's sigmoid classifier has a logit for label 0, which its COCO training never makes
positive; kdetect's class ``i`` is torchvision's label ``i + 1``, so those rows are dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from kdetect.plumbing.errors import CheckpointError
from kdetect.pretrained.state_dict import read_state_dict
from kdetect.pretrained.torchvision import WeightPlan, conv_kernel

_COMMON = {
    "backbone": "torchvision_resnet50",
    "freeze": "stage1",  # torchvision's default trainable_backbone_layers=3
    "resize_mode": "min_max",
    "min_size": 800,
    "max_size": 1333,
    "image_size": (800, 1344),  # the training frame; predict uses min_max
}

#: ``RetinaNet`` options of each importable torchvision architecture.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "retinanet_resnet50_fpn": {
        **_COMMON,
        "frozen_batch_norm": True,
        "batch_norm_epsilon": 0.0,  # torchvision loads COCO_V1 with overwrite_eps(model, 0.0)
        "extra_levels_from": "p5",
        "head_group_norm": False,
        "box_loss": "l1",
    },
    "retinanet_resnet50_fpn_v2": {
        **_COMMON,
        "frozen_batch_norm": False,
        "batch_norm_epsilon": 1e-5,
        "extra_levels_from": "c5",
        "head_group_norm": True,
        "box_loss": "giou",
    },
}

#: torchvision's published COCO weights of each architecture: (weights enum, file, box AP).
PUBLISHED_WEIGHTS = {
    "retinanet_resnet50_fpn": (
        "RetinaNet_ResNet50_FPN_Weights.COCO_V1",
        "https://download.pytorch.org/models/retinanet_resnet50_fpn_coco-eeacb38b.pth",
        36.4,
    ),
    "retinanet_resnet50_fpn_v2": (
        "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1",
        "https://download.pytorch.org/models/retinanet_resnet50_fpn_v2_coco-5905b1c5.pth",
        41.5,
    ),
}

_CLASS_LOGITS = "head.classification_head.cls_logits."
# Before torchvision 0.13 a head tower was a Sequential of conv, ReLU, conv, ...: conv ``i`` of
# the COCO_V1 file is ``conv.{2i}``, today's ``conv.{i}.0``.
_LEGACY_TOWER = re.compile(r"^(head\.(?:classification|regression)_head\.conv\.)(\d+)\.(\w+)$")


def with_modern_names(source):
    """``source`` (a checkpoint path or a state dict) with the head towers' pre-0.13 key names
    renamed; a file without them is returned as given."""
    state = source if isinstance(source, Mapping) else read_state_dict(os.fspath(source))
    if not any(_LEGACY_TOWER.match(key) for key in state):
        return source
    renamed = {}
    for key, value in state.items():
        match = _LEGACY_TOWER.match(key)
        if match:
            prefix, index, name = match.groups()
            key = f"{prefix}{int(index) // 2}.0.{name}"
        renamed[key] = value
    return renamed


def num_classes(state: dict, name: str, arch: str, anchors_per_location: int = 9) -> int:
    """The foreground classes of a dense-head state dict: its class logits per anchor less
    torchvision's label 0."""
    key = _CLASS_LOGITS + "weight"
    if key not in state or np.ndim(state[key]) != 4:
        raise CheckpointError(f"{name}: not a torchvision {arch} checkpoint (no {key})")
    rows = int(state[key].shape[0])
    if rows % anchors_per_location or rows // anchors_per_location < 2:
        raise CheckpointError(
            f"{name}: {key} has {rows} rows, not {anchors_per_location} anchors x classes"
        )
    return rows // anchors_per_location - 1


def drop_label_zero(anchors: int):
    """Converters of a class-logit conv's (weight, bias) without torchvision's label 0."""

    def weight(w):
        w = w.reshape((anchors, -1) + w.shape[1:])[:, 1:]
        return conv_kernel(w.reshape((-1,) + w.shape[2:]))

    def bias(b):
        return b.reshape(anchors, -1)[:, 1:].reshape(-1)

    return weight, bias


def plan_pyramid(plan: WeightPlan, fpn) -> None:
    """The pyramid's convs: lateral and output convs of C3..C5, then P6 and P7."""
    for i in range(len(fpn.lateral_convs)):
        plan.conv(f"backbone.fpn.inner_blocks.{i}.", fpn.lateral_convs[i])
        plan.conv(f"backbone.fpn.layer_blocks.{i}.", fpn.output_convs[i])
    for name, conv in zip(("p6", "p7"), fpn.extra_level_convs, strict=True):
        plan.conv(f"backbone.fpn.extra_blocks.{name}.", conv)


def plan_tower(plan: WeightPlan, prefix: str, convs, norms) -> None:
    """A head tower: ``{prefix}conv.{i}.0`` convs, ``{prefix}conv.{i}.1`` group norms."""
    for i, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
        plan.conv(f"{prefix}conv.{i}.0.", conv)
        if norm is not None:
            plan.group_norm(f"{prefix}conv.{i}.1.", norm)


def weight_plan(model) -> WeightPlan:
    """torchvision key -> (kdetect variable, converter) for every weight of ``model``."""
    plan = WeightPlan()
    plan.backbone("backbone.body.", model.backbone)
    plan_pyramid(plan, model.fpn)
    head = model.head
    plan_tower(plan, "head.classification_head.", head.cls_convs, head.cls_norms)
    plan_tower(plan, "head.regression_head.", head.box_convs, head.box_norms)
    weight, bias = drop_label_zero(head.num_anchors)
    plan.linear(_CLASS_LOGITS, head.cls_logits, weight=weight, bias=bias)
    plan.conv("head.regression_head.bbox_reg.", head.bbox_reg)
    return plan
