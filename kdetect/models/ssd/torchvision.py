"""torchvision's SSD checkpoints: the options of each architecture and the map from its keys to
:class:`~kdetect.models.ssd.SSD`'s weights.

``ssd300_vgg16``: VGG16 with SSD's L2-normalised conv4_3, dilated fc6 and extra layers, 300 x 300
input stretched from any image, SSD300's default boxes. ``ssdlite320_mobilenet_v3_large``:
MobileNetV3-Large with the reduced tail (as torchvision builds it for its COCO file, whose
backbone was not ImageNet-initialised), batch norm eps 0.001 / momentum 0.03, depthwise
predictors, 320 x 320 input. The class logits keep torchvision's background first.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kdetect.plumbing.errors import CheckpointError
from kdetect.pretrained.torchvision import WeightPlan

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "ssd300_vgg16": {
        "backbone": "torchvision_ssd_vgg16",
        "image_size": (300, 300),
        "resize_mode": "fixed",
        "head_type": "conv",
        "aspect_ratios": ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,)),
        "anchor_scales": (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05),
        "min_ratio": 0.15,  # (unused with explicit scales)
        "max_ratio": 0.9,
        "steps": (8.0, 16.0, 32.0, 64.0, 100.0, 300.0),
        "extra_channels": (512, 256, 256, 256),
        "score_thresh": 0.01,
        "nms_thresh": 0.45,
        "detections_per_img": 200,
        "topk_candidates": 400,
    },
    "ssdlite320_mobilenet_v3_large": {
        "backbone": "torchvision_mobilenet_v3_large_ssdlite",
        "image_size": (320, 320),
        "resize_mode": "fixed",
        "head_type": "depthwise",
        "aspect_ratios": ((2.0, 3.0),) * 6,
        "min_ratio": 0.2,
        "max_ratio": 0.95,
        "extra_channels": (512, 256, 256, 128),
        "score_thresh": 0.001,
        "nms_thresh": 0.55,
        "detections_per_img": 300,
        "topk_candidates": 300,
        "batch_norm_epsilon": 1e-3,
        "batch_norm_momentum": 0.97,  # torch's momentum 0.03
    },
}

#: torchvision's published COCO weights of each architecture: (weights enum, file, box AP).
PUBLISHED_WEIGHTS = {
    "ssd300_vgg16": (
        "SSD300_VGG16_Weights.COCO_V1",
        "https://download.pytorch.org/models/ssd300_vgg16_coco-b556d3b4.pth",
        25.1,
    ),
    "ssdlite320_mobilenet_v3_large": (
        "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1",
        "https://download.pytorch.org/models/ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
        21.3,
    ),
}

#: The last class predictor's key: its outputs are anchors x (classes + background).
_CLASS_KEYS = {
    "ssd300_vgg16": ("head.classification_head.module_list.5.weight", 4),
    "ssdlite320_mobilenet_v3_large": ("head.classification_head.module_list.5.1.weight", 6),
}


def num_classes(state: dict, name: str, arch: str) -> int:
    """The foreground classes of an SSD state dict."""
    key, anchors = _CLASS_KEYS[arch]
    if key not in state or np.ndim(state[key]) != 4 or state[key].shape[0] % anchors:
        raise CheckpointError(f"{name}: not a torchvision {arch} checkpoint (no {key})")
    count = int(state[key].shape[0]) // anchors - 1
    if count < 1:
        raise CheckpointError(f"{name}: {key} has no foreground class")
    return count


def _mobilenet_key(layer_name: str) -> str:
    """SSDlite's module path of a kdetect MobileNetV3 layer: blocks 0-12 and block 13's
    expansion are ``features.0``, the rest of block 13 and blocks 14-16 ``features.1``."""
    parts = layer_name.split("_")  # features_13_block_1_0, features_16_0, ...
    index, rest = int(parts[1]), parts[2:]
    if index < 13 or (index == 13 and rest[:2] == ["block", "0"]):
        if index == 13:
            rest = rest[2:]
        return ".".join(["features", "0", str(index), *rest])
    if index == 13:
        return ".".join(["features", "1", "0", *rest[1:]])
    return ".".join(["features", "1", str(index - 13), *rest])


def weight_plan(model) -> WeightPlan:
    """torchvision key -> (kdetect variable, converter) for every weight of ``model``."""
    plan = WeightPlan()
    mobilenet = model.backbone_name == "torchvision_mobilenet_v3_large_ssdlite"
    for layer in model.extractor.layers + model.backbone.layers:
        if not layer.weights or layer is model.backbone:
            continue
        if layer.name == "l2_norm":
            plan["backbone.scale_weight"] = (layer.weight, lambda w: w)
            continue
        if mobilenet and layer.name.startswith("features_"):
            path = _mobilenet_key(layer.name)
        else:
            path = layer.name.replace("_", ".")
        prefix = f"backbone.{path}."
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            plan.depthwise(prefix, layer)
        elif isinstance(layer, keras.layers.Conv2D):
            plan.conv(prefix, layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            plan.batch_norm(prefix, layer)
    head = model.head
    for kind, branches in (
        ("classification_head", head.cls_branches),
        ("regression_head", head.box_branches),
    ):
        for level, branch in enumerate(branches):
            prefix = f"head.{kind}.module_list.{level}."
            if head.head_type == "conv":
                plan.conv(prefix, branch[0])
            else:
                plan.depthwise(prefix + "0.0.", branch[0])
                plan.batch_norm(prefix + "0.1.", branch[1])
                plan.conv(prefix + "1.", branch[2])
    return plan
