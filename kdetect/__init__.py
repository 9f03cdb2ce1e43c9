"""kdetect: object detection for Keras 3.

Faster R-CNN written as Keras layers and a ``keras.Model``, YAML recipes that wrap ``fit()``,
and a ``kdetect`` command line.
"""

import os

# Keras 3 picks its backend at import time; kdetect's model code relies on TensorFlow for a few
# ops (padded NMS, crop_and_resize, TFRecord), so default to it unless the user chose otherwise.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

#: The layers of the package, bottom to top, one folder each: a module imports only from its own
#: layer or a lower one (docs/architecture.md; tests/test_import_layers.py reads every import).
LAYERS = (
    "plumbing",
    "ops",
    "layers",
    "backbones",
    "pretrained",
    "models",
    "data",
    "drawing",
    "evaluation",
    "runs",
    "config",
    "engine",
    "apps",
    "cli",
)

from kdetect.plumbing.errors import KdetectError  # noqa: E402

# Imported lazily so that light-weight users (offline evaluation, dataset readers, the CLI's
# --help) do not pay for importing TensorFlow.
_LAZY = {
    "FasterRCNN": "kdetect.models.faster_rcnn",
    "Detector": "kdetect.apps.predict",
    "load_model": "kdetect.apps.predict",
    "train": "kdetect.engine.training",
}

__all__ = ["Detector", "FasterRCNN", "KdetectError", "__version__", "load_model", "train"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdetect' has no attribute {name!r}")
