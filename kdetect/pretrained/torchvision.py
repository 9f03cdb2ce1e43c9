"""Import torchvision's Faster R-CNN checkpoints into kdetect's own :class:`FasterRCNN`.

An architecture name (torchvision's builder name) stands for the ``FasterRCNN`` options that
reproduce it exactly: torchvision's ResNet50 (v1.5) with frozen batch norm of the checkpoint's
epsilon, RoIAlign with ``aligned=False``, the ``min_max`` resize (800 / 1333, each image at its
own frame padded to 32), anchors, RPN and box-head settings at torchvision's defaults. The state
dict is read without torch (:mod:`kdetect.pretrained.state_dict`) and mapped tensor by tensor:

* convolutions OIHW -> HWIO (depthwise ones [C, 1, H, W] -> [H, W, C, 1]), linear layers
  transposed;
* frozen batch norm ``weight/bias/running_mean/running_var`` -> ``gamma/beta/moving_*``;
* the first box-head layer (``fc6``) reads a RoI flattened channel-major (C, 7, 7) in torch and
  (7, 7, C) in kdetect, so its input rows are permuted;
* torchvision's label 0 is the background: the class logits keep it first (as kdetect does),
  and the box deltas of label 0, which kdetect does not predict, are dropped.

Every key of the file must be used and every weight of the model set; otherwise the error names
the first missing and unexpected keys and shape mismatches, so a wrong ``arch`` is caught.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from kdetect.errors import CheckpointError
from kdetect.layers import ConvFCBoxHead
from kdetect.pretrained.state_dict import NON_FINITE, first_non_finite, read_state_dict

#: kdetect ``FasterRCNN`` options of each importable torchvision architecture.
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
_IGNORED_SUFFIXES = ("num_batches_tracked",)
# Module names that torchvision 0.13 changed; both spellings are accepted.
_RENAMES = (
    ("rpn.head.conv.0.0.", "rpn.head.conv."),
    *((f"backbone.fpn.inner_blocks.{i}.0.", f"backbone.fpn.inner_blocks.{i}.") for i in range(4)),
    *((f"backbone.fpn.layer_blocks.{i}.0.", f"backbone.fpn.layer_blocks.{i}.") for i in range(4)),
)


def normalise_keys(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys in one spelling: no ``module.`` prefix (DataParallel), pre-0.13 module names."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for new, old in _RENAMES:
            if key.startswith(new):
                key = old + key[len(new) :]
        out[key] = value
    return out


def _conv(w):
    return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _depthwise(w):
    return np.transpose(w, (2, 3, 0, 1))  # [C, 1, H, W] -> [H, W, C, 1]


def _linear(w):
    return np.transpose(w)


def _same(w):
    return w


class _WeightPlan(dict):
    """torchvision key -> (kdetect variable, converter), filled one torch module at a time."""

    def conv(self, prefix: str, layer) -> None:
        self[prefix + "weight"] = (layer.kernel, _conv)
        if layer.use_bias:
            self[prefix + "bias"] = (layer.bias, _same)

    def batch_norm(self, prefix: str, layer) -> None:
        self[prefix + "weight"] = (layer.gamma, _same)
        self[prefix + "bias"] = (layer.beta, _same)
        self[prefix + "running_mean"] = (layer.moving_mean, _same)
        self[prefix + "running_var"] = (layer.moving_variance, _same)

    def linear(self, prefix: str, layer, weight=_linear, bias=_same) -> None:
        self[prefix + "weight"] = (layer.kernel, weight)
        self[prefix + "bias"] = (layer.bias, bias)


def _flattened_chw(channels: int, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Converter of a linear layer reading a RoI flattened channel-major (torch) for one reading
    it channel-last (kdetect)."""

    def convert(w):  # [units, C * S * S] channel-major -> [S * S * C, units] channel-last
        units = w.shape[0]
        w = w.reshape(units, channels, size, size).transpose(2, 3, 1, 0)
        return w.reshape(size * size * channels, units)

    return convert


def _weight_plan(model) -> dict[str, tuple[Any, Callable[[np.ndarray], np.ndarray]]]:
    """torchvision key -> (kdetect variable, converter) for every weight of ``model``."""
    plan = _WeightPlan()
    _plan_backbone(plan, model.backbone)
    _plan_fpn_and_rpn(plan, model)
    _plan_box_head(plan, model)
    return plan


def _plan_backbone(plan: _WeightPlan, backbone) -> None:
    for layer in backbone.layers:
        # MobileNetV3's body is its ``features`` Sequential itself: body.4.block.0.0.weight
        path = layer.name.removeprefix("features_").replace("_", ".")
        prefix = f"backbone.body.{path}."
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            plan[prefix + "weight"] = (layer.kernel, _depthwise)
        elif isinstance(layer, keras.layers.Conv2D):
            plan.conv(prefix, layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            plan.batch_norm(prefix, layer)


def _plan_fpn_and_rpn(plan: _WeightPlan, model) -> None:
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


def _plan_box_head(plan: _WeightPlan, model) -> None:
    size = model.roi_align.output_size
    head = model.box_head
    if isinstance(head, ConvFCBoxHead):  # Sequential: convs, Flatten, (Linear, ReLU) * n
        for index, (layer, norm) in enumerate(zip(head.convs, head.norms)):
            plan.conv(f"roi_heads.box_head.{index}.0.", layer)
            plan.batch_norm(f"roi_heads.box_head.{index}.1.", norm)
        channels = head.conv_channels[-1]
        for j, fc in enumerate(head.fcs):
            index = len(head.convs) + 1 + 2 * j
            weight = _flattened_chw(channels, size) if j == 0 else _linear
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


def _state(source) -> tuple[str, dict[str, np.ndarray]]:
    if isinstance(source, Mapping):
        return "state dict", {k: np.asarray(v) for k, v in source.items()}
    name = os.fspath(source)
    return name, read_state_dict(name)


def _listing(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_torchvision(cls, source, arch: str = "fasterrcnn_resnet50_fpn", **overrides):
    """A ``cls`` (``FasterRCNN``) holding the weights of a torchvision checkpoint.

    Args:
        cls: the detector class.
        source: a ``.pth`` / ``.pt`` / ``.safetensors`` path, or a state dict of arrays.
        arch: torchvision's builder name, one of :data:`ARCHITECTURES`.
        overrides: ``FasterRCNN`` arguments to change (e.g. ``box_score_thresh``); the class
            count always comes from the checkpoint.

    Raises:
        CheckpointError: unreadable file, unknown ``arch``, a tensor holding NaN or infinity
            (named), or a file whose keys or shapes are not those of ``arch`` (the message
            names the first differences).
    """
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"unknown --arch {arch!r}; importable: {', '.join(sorted(ARCHITECTURES))}"
        )
    name, state = _state(source)
    state = {k: v for k, v in normalise_keys(state).items() if not k.endswith(_IGNORED_SUFFIXES)}
    if _CLASS_LOGITS_KEY not in state or np.ndim(state[_CLASS_LOGITS_KEY]) != 2:
        raise CheckpointError(
            f"{name}: not a torchvision Faster R-CNN checkpoint (no {_CLASS_LOGITS_KEY})"
        )
    bad = first_non_finite(state.items())
    if bad is not None:
        raise CheckpointError(f"{name}: tensor {bad} {NON_FINITE}")
    num_classes = int(state[_CLASS_LOGITS_KEY].shape[0]) - 1
    if num_classes < 1:
        raise CheckpointError(f"{name}: {_CLASS_LOGITS_KEY} has no foreground class")
    options = {**ARCHITECTURES[arch], **overrides, "num_classes": num_classes}
    model = cls(**options)
    plan = _weight_plan(model)
    missing = sorted(set(plan) - set(state))
    unexpected = sorted(set(state) - set(plan))
    mismatched = []
    converted = {}
    for key in sorted(set(plan) & set(state)):
        variable, convert = plan[key]
        value = convert(np.asarray(state[key], dtype=np.float32))
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(f"{key} {tuple(state[key].shape)}")
        converted[key] = value
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_listing(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches ({_listing(mismatched)})")
        raise CheckpointError(f"{name}: not a {arch} checkpoint: " + "; ".join(parts))
    for key, value in converted.items():
        plan[key][0].assign(value)
    return model
