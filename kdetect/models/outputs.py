"""The model's output dict, cut into the detections of each image.

``FasterRCNN.predict`` (and :class:`kdetect.apps.export.ExportedModel`'s ``predict``) return padded
arrays, the same for every image of a batch::

    boxes           [B, N, 4]  xyxy, in pixels of each input image
    confidence      [B, N]     class probability, sorted descending
    labels          [B, N]     0-based class id, -1 on padding rows
    num_detections  [B]        rows of real detections

:func:`split_detections` keeps, per image, the first ``num_detections`` rows (all ``N`` when the
dict has no counts) whose label is a class id. It needs only NumPy. Classes without names are
called :func:`fallback_class_names`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: The keys of the model's output dict.
OUTPUT_KEYS = ("boxes", "confidence", "labels", "num_detections")


def fallback_class_names(count: int) -> list[str]:
    """``class_0``, ``class_1``, ...: the names of classes whose source gives none."""
    return [f"class_{i}" for i in range(int(count))]


@dataclass
class Detections:
    """The detections of one image: ``boxes`` [n, 4] xyxy pixels, ``confidence`` [n] and
    ``labels`` [n] (0-based class ids), highest confidence first."""

    boxes: np.ndarray
    confidence: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def split_detections(outputs: Mapping, num_classes: int | None = None) -> list[Detections]:
    """One :class:`Detections` per image of a batch of model outputs.

    Rows past an image's ``num_detections`` and rows labelled -1 (padding) are dropped; with
    ``num_classes``, so are labels that are not below it.
    """
    boxes = np.asarray(outputs["boxes"])
    confidence = np.asarray(outputs["confidence"])
    labels = np.asarray(outputs["labels"])
    counts = outputs.get("num_detections")
    counts = [labels.shape[1]] * len(labels) if counts is None else np.asarray(counts)
    images = []
    for b, count in enumerate(counts):
        count = int(count)
        image_labels = labels[b, :count]
        keep = image_labels >= 0
        if num_classes is not None:
            keep &= image_labels < num_classes
        images.append(
            Detections(boxes[b, :count][keep], confidence[b, :count][keep], image_labels[keep])
        )
    return images
