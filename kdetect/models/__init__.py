"""Detection models: one folder per type, built by name from :mod:`kdetect.models.registry`.

``LOSS_NAMES`` (Faster R-CNN's) and the registry are importable without TensorFlow; the
detector classes load on first use, like ``kdetect.FasterRCNN``.
"""

import importlib

from kdetect.models.registry import MODEL_TYPES, build, custom_objects

#: The input transform's resize rules (``ImageTransform``; a recipe's ``model.resize_mode``).
RESIZE_MODES = ("fit", "min_max", "fixed")

#: Faster R-CNN's losses: their sum first, then the four terms.
LOSS_NAMES = ("loss", "rpn_cls_loss", "rpn_box_loss", "rcnn_cls_loss", "rcnn_box_loss")


def loss_names(keys) -> list[str]:
    """The training-loss keys among ``keys`` (a logs dict or a history row): ``loss``, then
    each detector's terms (``*_loss``), in their order; validation keys excluded."""
    return [k for k in keys if k == "loss" or (k.endswith("_loss") and not k.startswith("val_"))]


__all__ = [
    "LOSS_NAMES",
    "MODEL_TYPES",
    "build",
    "custom_objects",
    "loss_names",
    *(entry.cls for entry in MODEL_TYPES.values()),
]


def __getattr__(name):
    # The classes import TensorFlow: load each on first use (``import kdetect`` stays fast).
    for entry in MODEL_TYPES.values():
        if name == entry.cls:
            return getattr(importlib.import_module(entry.module), entry.cls)
    raise AttributeError(f"module 'kdetect.models' has no attribute {name!r}")
