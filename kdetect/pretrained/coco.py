"""COCO's category names in torchvision's label layout.

torchvision's COCO detectors predict 91 labels: 0 is the background and 1..90 are COCO's
category ids, eleven of which COCO never used (torchvision names them "N/A"). kdetect has no
background label, so kdetect label ``i`` is torchvision label ``i + 1`` (and COCO category id
``i + 1``). The unused ids are kept so that the ids line up; they are named ``N/A-<id>`` so every
class name stays unique.
"""

from __future__ import annotations

_UNUSED = "N/A"

#: torchvision's 91 labels, index = torchvision label = COCO category id.
TORCHVISION_COCO_LABELS = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", _UNUSED, "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", _UNUSED, "backpack", "umbrella", _UNUSED, _UNUSED, "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", _UNUSED, "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", _UNUSED,
    "dining table", _UNUSED, _UNUSED, "toilet", _UNUSED, "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", _UNUSED,
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


def coco_class_names() -> list[str]:
    """kdetect's 90 class names of a torchvision COCO detector (label i = COCO id i + 1)."""
    return [
        f"{_UNUSED}-{label}" if name == _UNUSED else name
        for label, name in enumerate(TORCHVISION_COCO_LABELS)
    ][1:]
