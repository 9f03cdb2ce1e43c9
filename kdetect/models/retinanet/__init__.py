"""RetinaNet: a single-stage detector with a focal-loss dense head on a P3..P7 pyramid."""

from kdetect.models.retinanet.head import RetinaNetHead
from kdetect.models.retinanet.model import RetinaNet

__all__ = ["RetinaNet", "RetinaNetHead"]
