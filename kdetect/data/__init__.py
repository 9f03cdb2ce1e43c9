"""Datasets: VOC/COCO/CSV/YOLO/Label Studio readers and writers, built-in synthetic shapes,
TFRecords and the tf.data pipeline.

Readers and records import no TensorFlow; the pipeline and TFRecord helpers are loaded on first
use.
"""

from kdetect.data.readers import InvalidBox, read_annotations, scan_annotations
from kdetect.data.records import Annotations, Record

_LAZY = {
    "make_dataset": "kdetect.data.pipeline",
    "transform_dataset": "kdetect.data.tfrecord",
    "inspect_dataset": "kdetect.data.inspect",
    "convert_dataset": "kdetect.data.writers",
    "load_image": "kdetect.data.images",
    "make_shapes": "kdetect.data.shapes",
}

__all__ = ["Annotations", "InvalidBox", "Record", "read_annotations", "scan_annotations", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdetect.data' has no attribute {name!r}")
