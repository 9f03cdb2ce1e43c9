"""Detection models.

``LOSS_NAMES`` is importable without TensorFlow; ``FasterRCNN`` (which imports it) loads on first
use, like ``kdetect.FasterRCNN``.
"""

import importlib

#: The losses a detector logs: their sum first, then the four terms.
LOSS_NAMES = ("loss", "rpn_cls_loss", "rpn_box_loss", "rcnn_cls_loss", "rcnn_box_loss")

__all__ = ["LOSS_NAMES", "FasterRCNN"]


def __getattr__(name):
    if name == "FasterRCNN":
        return importlib.import_module("kdetect.models.faster_rcnn").FasterRCNN
    raise AttributeError(f"module 'kdetect.models' has no attribute {name!r}")
