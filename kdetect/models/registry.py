"""The model registry: every detector type and every importable torchvision architecture.

A model type (``model.type`` in a recipe) is one folder under ``kdetect/models/`` whose package
exports one :class:`~kdetect.models.base.DetectionModel` subclass; its line here names the
class and the torchvision builders it reproduces. The registry imports nothing heavy: a
class is imported when first asked for, so ``kdetect --help`` and the recipe checks stay fast.

    >>> from kdetect.models import build
    >>> model = build("retinanet_resnet50_fpn", num_classes=3)          # torchvision's layout
    >>> model = build("retinanet", num_classes=3, backbone="tiny")       # kdetect's own
    >>> model = build("retinanet_resnet50_fpn", weights="retinanet.pth")  # a checkpoint
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from kdetect.plumbing.errors import CheckpointError, did_you_mean


@dataclass(frozen=True)
class ModelType:
    """One detector type: ``module.cls``, and the torchvision builder names it reproduces."""

    name: str
    module: str
    cls: str
    architectures: tuple[str, ...]
    summary: str


#: ``model.type`` -> its registry line. Adding a model: its folder, then one line here.
MODEL_TYPES: dict[str, ModelType] = {
    entry.name: entry
    for entry in (
        ModelType(
            "faster_rcnn",
            "kdetect.models.faster_rcnn",
            "FasterRCNN",
            (
                "fasterrcnn_resnet50_fpn",
                "fasterrcnn_resnet50_fpn_v2",
                "fasterrcnn_mobilenet_v3_large_fpn",
            ),
            "two-stage: RPN proposals, RoIAlign, box head",
        ),
        ModelType(
            "retinanet",
            "kdetect.models.retinanet",
            "RetinaNet",
            ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"),
            "single-stage: anchors on P3-P7, focal-loss class and box towers",
        ),
        ModelType(
            "fcos",
            "kdetect.models.fcos",
            "FCOS",
            ("fcos_resnet50_fpn",),
            "single-stage, anchor-free: box side distances and centre-ness on P3-P7",
        ),
        ModelType(
            "ssd",
            "kdetect.models.ssd",
            "SSD",
            ("ssd300_vgg16",),
            "single-shot: default boxes on six maps, softmax with background",
        ),
        ModelType(
            "ssdlite",
            "kdetect.models.ssd",
            "SSDLite",
            ("ssdlite320_mobilenet_v3_large",),
            "single-shot: SSD with depthwise-separable heads (the classic phone detector)",
        ),
    )
}

DEFAULT_TYPE = "faster_rcnn"


class UnknownModelError(CheckpointError, ValueError):
    """A model type or architecture name that the registry does not hold (one line)."""


def model_types() -> tuple[str, ...]:
    """Every ``model.type``."""
    return tuple(MODEL_TYPES)


def architectures() -> dict[str, str]:
    """Every importable torchvision builder name -> its ``model.type``."""
    return {arch: entry.name for entry in MODEL_TYPES.values() for arch in entry.architectures}


def _entry(model_type: str) -> ModelType:
    if model_type not in MODEL_TYPES:
        raise UnknownModelError(
            f"unknown model type {model_type!r}{did_you_mean(model_type, MODEL_TYPES)}; "
            f"expected one of {', '.join(MODEL_TYPES)}"
        )
    return MODEL_TYPES[model_type]


def model_class(model_type: str = DEFAULT_TYPE) -> type:
    """The detector class of ``model_type`` (imported on first use)."""
    entry = _entry(model_type)
    return getattr(importlib.import_module(entry.module), entry.cls)


def architecture_type(arch: str) -> str:
    """The ``model.type`` that reproduces torchvision's builder ``arch``."""
    found = architectures()
    if arch not in found:
        raise UnknownModelError(
            f"unknown --arch {arch!r}{did_you_mean(arch, found)}; importable: "
            f"{', '.join(sorted(found))}"
        )
    return found[arch]


def architecture_options(arch: str) -> dict:
    """The constructor options that reproduce torchvision's builder ``arch``."""
    return dict(model_class(architecture_type(arch)).TORCHVISION_ARCHITECTURES[arch])


def custom_objects() -> dict[str, type]:
    """Every Keras class kdetect saves in a ``.keras`` file, by its registered name, for Keras'
    own ``custom_objects``: ``keras.saving.load_model(path, custom_objects=custom_objects())``
    (or ``keras.saving.custom_object_scope``). Imports every model type (TensorFlow)."""
    import keras  # Keras' registry of serialisable classes, read when a file is loaded

    register_all()
    return {
        name: cls
        for name, cls in keras.saving.get_custom_objects().items()
        if name.startswith("kdetect>")
    }


def register_all() -> None:
    """Import every model type and the learning-rate schedule (each registers its Keras classes
    for loading saved files)."""
    importlib.import_module("kdetect.models.schedules")
    for name in MODEL_TYPES:
        model_class(name)


def build(
    name: str = DEFAULT_TYPE,
    num_classes: int | None = None,
    weights: str | os.PathLike | None = None,
    **kwargs,
):
    """A detector by name: a ``model.type`` (kdetect's defaults for that type) or a torchvision
    builder name (its exact layout; with ``weights``, that checkpoint's weights and classes).

    ``kwargs`` are the class's constructor arguments (they override an architecture's).
    """
    if name in MODEL_TYPES:
        if weights is not None:
            raise UnknownModelError(
                f"weights: a checkpoint needs its torchvision architecture name, not the type "
                f"{name!r} (one of {', '.join(MODEL_TYPES[name].architectures)})"
            )
        if num_classes is None:
            raise TypeError(f"build({name!r}) needs num_classes")
        return model_class(name)(num_classes=num_classes, **kwargs)
    found = architectures()
    if name not in found:
        names = [*MODEL_TYPES, *found]
        raise UnknownModelError(
            f"unknown model {name!r}{did_you_mean(name, names)}; model types: "
            f"{', '.join(MODEL_TYPES)}; torchvision architectures: {', '.join(sorted(found))}"
        )
    cls = model_class(found[name])
    if weights is not None:
        model = cls.from_torchvision(weights, arch=name, **kwargs)
        if num_classes is not None and num_classes != model.num_classes:
            raise UnknownModelError(
                f"num_classes: {weights} holds {model.num_classes} classes, not {num_classes} "
                "(to train new classes, fine-tune from an imported run with init_from)"
            )
        return model
    options = {**cls.TORCHVISION_ARCHITECTURES[name], **kwargs}
    # torchvision builders default to COCO: 91 logits, 90 classes and the background
    return cls(num_classes=90 if num_classes is None else num_classes, **options)
