"""FCOS: an anchor-free single-stage detector with centre-ness on a P3..P7 pyramid."""

from kdetect.models.fcos.head import FCOSHead
from kdetect.models.fcos.model import FCOS

__all__ = ["FCOS", "FCOSHead"]
