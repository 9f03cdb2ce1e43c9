"""Detection models."""

from kdetect.models.faster_rcnn import FasterRCNN

__all__ = ["FasterRCNN"]
