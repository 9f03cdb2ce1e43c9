"""Label Studio's ``rectanglelabels`` regions <-> boxes in pixels.

Label Studio stores a rectangle in percent of the image (``x``, ``y`` of the top-left corner,
``width``, ``height``, each 0-100) together with the image's ``original_width`` and
``original_height``. Its task exports, annotations and predictions all use the same region
dict, so the reader of its JSON export, ``kdetect predict --format labelstudio`` and the ML
backend share these two conversions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

RECTANGLE = "rectanglelabels"


def region_from_box(
    box: Sequence[float],
    label: str,
    width: int,
    height: int,
    *,
    score: float | None = None,
    from_name: str = "label",
    to_name: str = "image",
) -> dict:
    """One ``rectanglelabels`` region for an ``xyxy`` pixel box on a ``width`` x ``height``
    image."""
    xmin, ymin, xmax, ymax = (float(v) for v in box)
    region = {
        "from_name": from_name,
        "to_name": to_name,
        "type": RECTANGLE,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {
            "x": 100.0 * xmin / width,
            "y": 100.0 * ymin / height,
            "width": 100.0 * (xmax - xmin) / width,
            "height": 100.0 * (ymax - ymin) / height,
            "rotation": 0,
            RECTANGLE: [label],
        },
    }
    if score is not None:
        region["score"] = float(score)
    return region


def box_from_region(region: dict, width: int | None = None, height: int | None = None) -> tuple:
    """``(label, [xmin, ymin, xmax, ymax])`` in pixels of one region.

    The image size is the region's ``original_width``/``original_height``, else the given one.
    Raises ``ValueError`` (the caller adds the file and task) for a region that is not a single-
    label, unrotated rectangle or that has no image size (or one that is not a positive number).
    """
    value = region.get("value")
    if not isinstance(value, dict):
        raise ValueError("region has no 'value' object")
    labels = value.get(RECTANGLE)
    if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
        raise ValueError(f"region needs exactly one name in value.{RECTANGLE}, got {labels!r}")
    try:
        rotation = float(value.get("rotation", 0) or 0)
    except (TypeError, ValueError):
        raise ValueError(f"rotation must be a number, got {value['rotation']!r}") from None
    if rotation != 0:
        raise ValueError(f"rotated rectangle ({value['rotation']} degrees) is not supported")
    width = region.get("original_width", width)
    height = region.get("original_height", height)
    if width is None or height is None:
        raise ValueError("region has no original_width/original_height")
    for key, size in (("original_width", width), ("original_height", height)):
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not 0 < size < math.inf:
            raise ValueError(f"{key} must be a positive number, got {size!r}")
    try:
        x, y, w, h = (float(value[key]) for key in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"region value needs numbers x, y, width, height ({error})") from None
    box = [x * width / 100.0, y * height / 100.0, (x + w) * width / 100.0, (y + h) * height / 100.0]
    return labels[0], box


def rectangle_regions(results: Iterable[dict]) -> list[dict]:
    """The ``rectanglelabels`` regions of an annotation's or prediction's ``result`` list."""
    return [region for region in results if region.get("type") == RECTANGLE]
