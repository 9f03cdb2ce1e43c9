"""Import torchvision detection checkpoints into kdetect's own detectors: the shared part.

An architecture name (torchvision's builder name, e.g. ``fasterrcnn_resnet50_fpn``,
``retinanet_resnet50_fpn``) stands for the detector options that reproduce it exactly; each
model type lists its own in its ``torchvision`` module (the class's ``TORCHVISION``; its
``ARCHITECTURES``) with the map from torchvision's keys to its weights (``weight_plan``) and the
class count a file holds (``num_classes``). The state dict is read without torch
(:mod:`kdetect.pretrained.state_dict`) and mapped tensor by tensor with the converters here:

* convolutions OIHW -> HWIO (depthwise ones [C, 1, H, W] -> [H, W, C, 1]), linear layers
  transposed;
* batch norm ``weight/bias/running_mean/running_var`` -> ``gamma/beta/moving_*``, group norm
  ``weight/bias`` -> ``gamma/beta``.

Every key of the file must be used and every weight of the model set; otherwise the error names
the first missing and unexpected keys and shape mismatches, so a wrong ``arch`` is caught.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import keras
import numpy as np

from kdetect.plumbing.errors import CheckpointError
from kdetect.pretrained.state_dict import NON_FINITE, first_non_finite, read_state_dict

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


def conv_kernel(w):
    return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def depthwise_kernel(w):
    return np.transpose(w, (2, 3, 0, 1))  # [C, 1, H, W] -> [H, W, C, 1]


def linear_kernel(w):
    return np.transpose(w)


def same(w):
    return w


class WeightPlan(dict):
    """torchvision key -> (kdetect variable, converter), filled one torch module at a time."""

    def conv(self, prefix: str, layer) -> None:
        self[prefix + "weight"] = (layer.kernel, conv_kernel)
        if layer.use_bias:
            self[prefix + "bias"] = (layer.bias, same)

    def batch_norm(self, prefix: str, layer) -> None:
        self[prefix + "weight"] = (layer.gamma, same)
        self[prefix + "bias"] = (layer.beta, same)
        self[prefix + "running_mean"] = (layer.moving_mean, same)
        self[prefix + "running_var"] = (layer.moving_variance, same)

    def linear(self, prefix: str, layer, weight=linear_kernel, bias=same) -> None:
        self[prefix + "weight"] = (layer.kernel, weight)
        self[prefix + "bias"] = (layer.bias, bias)

    def depthwise(self, prefix: str, layer) -> None:
        self[prefix + "weight"] = (layer.kernel, depthwise_kernel)
        if layer.use_bias:
            self[prefix + "bias"] = (layer.bias, same)

    def group_norm(self, prefix: str, layer) -> None:
        self[prefix + "weight"] = (layer.gamma, same)
        self[prefix + "bias"] = (layer.beta, same)

    def backbone(self, prefix: str, backbone) -> None:
        """A torchvision-layout backbone built by :mod:`kdetect.backbones.networks` (its layers
        named
        after torchvision's modules, ``_`` for ``.``)."""
        for layer in backbone.layers:
            # MobileNetV3's body is its ``features`` Sequential itself: body.4.block.0.0.weight
            path = layer.name.removeprefix("features_").replace("_", ".")
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                self.depthwise(f"{prefix}{path}.", layer)
            elif isinstance(layer, keras.layers.Conv2D):
                self.conv(f"{prefix}{path}.", layer)
            elif isinstance(layer, keras.layers.BatchNormalization):
                self.batch_norm(f"{prefix}{path}.", layer)


def _state(source) -> tuple[str, dict[str, np.ndarray]]:
    if isinstance(source, Mapping):
        return "state dict", {k: np.asarray(v) for k, v in source.items()}
    name = os.fspath(source)
    return name, read_state_dict(name)


def _listing(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_torchvision(cls, source, arch: str, **overrides):
    """A ``cls`` (a :class:`~kdetect.models.base.DetectionModel`) holding the weights of a
    torchvision checkpoint.

    Args:
        cls: the detector class; ``arch`` must be one of its ``TORCHVISION_ARCHITECTURES``.
        source: a ``.pth`` / ``.pt`` / ``.safetensors`` path, or a state dict of arrays.
        arch: torchvision's builder name.
        overrides: detector arguments to change (e.g. ``box_score_thresh``); the class count
            always comes from the checkpoint.

    Raises:
        CheckpointError: unreadable file, unknown ``arch``, a tensor holding NaN or infinity
            (named), or a file whose keys or shapes are not those of ``arch`` (the message
            names the first differences).
    """
    architectures = cls.TORCHVISION_ARCHITECTURES
    if arch not in architectures:
        raise CheckpointError(
            f"unknown --arch {arch!r} for {cls.__name__}; importable: "
            f"{', '.join(sorted(architectures))}"
        )
    name, state = _state(source)
    state = {k: v for k, v in normalise_keys(state).items() if not k.endswith(_IGNORED_SUFFIXES)}
    num_classes = cls.TORCHVISION.num_classes(state, name, arch)
    bad = first_non_finite(state.items())
    if bad is not None:
        raise CheckpointError(f"{name}: tensor {bad} {NON_FINITE}")
    options = {**architectures[arch], **overrides, "num_classes": num_classes}
    model = cls(**options)
    plan = cls.TORCHVISION.weight_plan(model)
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
