"""Faster R-CNN (Ren et al., 2015): backbone (+ FPN) -> RPN -> RoIAlign -> box head -> decoder.

``model`` is the detector, ``assembly`` its settings and layer builders, ``torchvision`` the
map from torchvision's checkpoints to its weights.
"""

from kdetect.models.faster_rcnn.model import FasterRCNN

__all__ = ["FasterRCNN"]
