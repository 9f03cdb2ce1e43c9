"""SSD and SSDlite: multi-scale feature maps, per-default-box predictors, per-class NMS.

``model`` is the detector, ``heads`` its default boxes and head (matching, losses with hard
negative mining, decoding), ``torchvision`` the map from torchvision's checkpoints.
"""

from kdetect.models.ssd.model import SSD, SSDLite

__all__ = ["SSD", "SSDLite"]
