"""Draw detections (boxes, labels, confidences) on images with Pillow."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A qualitative palette (Tableau 20, darker halves first); class i gets colour i mod 20.
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
]


def class_color(label_id: int) -> tuple[int, int, int]:
    """The drawing colour of a class id."""
    return PALETTE[int(label_id) % len(PALETTE)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


#: Drawn pictures of smaller images are enlarged (by a whole factor, pixels kept sharp) until
#: their shorter side reaches this, so that labels stay readable; serve's page does the same.
DRAW_MIN_SIDE = 320


def enlargement(width: int, height: int, min_side: int = DRAW_MIN_SIDE) -> int:
    """The whole factor that brings the shorter side of a ``width`` x ``height`` image to at
    least ``min_side`` (1 for images already that large)."""
    return max(1, -(-min_side // max(1, min(width, height))))


def draw_detections(
    image: np.ndarray | Image.Image,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: np.ndarray | Sequence[int],
    confidence: np.ndarray | Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    line_width: int | None = None,
    min_side: int | None = None,
) -> Image.Image:
    """Return a copy of ``image`` with each box drawn and labelled ``"name 0.93"``.

    Args:
        image: uint8 ``[H, W, 3]`` array (or float 0..255) or a PIL image.
        boxes: ``[N, 4]`` ``xyxy`` in pixels of ``image``.
        labels: ``[N]`` class ids (index into ``classes``).
        confidence: ``[N]`` detection confidences, or ``None`` for ground truth.
        classes: class names; ids are shown when ``None`` or out of range.
        line_width: box outline width; by default scaled with the image size.
        min_side: enlarge a smaller image first (nearest neighbour, by :func:`enlargement`),
            boxes with it, so that its labels are readable; None keeps the size.
    """
    if isinstance(image, Image.Image):
        canvas = image.convert("RGB").copy()
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = np.clip(array, 0, 255).astype(np.uint8)
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        canvas = Image.fromarray(array[..., :3])
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = enlargement(*canvas.size, min_side) if min_side else 1
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
        boxes = boxes * scale
    width, height = canvas.size
    line_width = line_width or max(1, round(min(width, height) / 200))
    font = _font(max(10, round(min(width, height) / 40)))
    draw = ImageDraw.Draw(canvas)
    labels = np.asarray(labels).reshape(-1)
    if confidence is not None:
        confidence = np.asarray(confidence, dtype=np.float32).reshape(-1)
    # Draw the least confident first so that the most confident boxes end up on top.
    order = np.argsort(confidence) if confidence is not None else np.arange(len(boxes))
    for i in order:
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        label = int(labels[i])
        color = class_color(label)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line_width)
        name = classes[label] if classes is not None and 0 <= label < len(classes) else str(label)
        text = name if confidence is None else f"{name} {confidence[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1
        tx = min(max(x1, 0), max(width - tw - 4, 0))
        draw.rectangle([tx, ty, tx + tw + 4, ty + th + 4], fill=color)
        draw.text((tx + 2 - left, ty + 2 - top), text, fill=_text_color(color), font=font)
    return canvas


def draw_batch(
    images: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str] | None = None,
    columns: int = 4,
    min_side: int = DRAW_MIN_SIDE,
) -> Image.Image:
    """One picture of a training batch as the model sees it: each image with its ground-truth
    boxes (padding rows, label < 0, skipped), small images enlarged as :func:`draw_detections`
    does, tiled ``columns`` wide."""
    tiles = []
    for image, image_boxes, image_labels in zip(images, boxes, labels, strict=True):
        keep = np.asarray(image_labels) >= 0
        tiles.append(
            draw_detections(image, np.asarray(image_boxes)[keep], np.asarray(image_labels)[keep],
                            classes=classes, min_side=min_side)
        )  # fmt: skip
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    tile_w, tile_h = tiles[0].size
    grid = Image.new("RGB", (columns * tile_w + (columns - 1) * 2, rows * tile_h + (rows - 1) * 2))
    for index, tile in enumerate(tiles):
        grid.paste(tile, ((index % columns) * (tile_w + 2), (index // columns) * (tile_h + 2)))
    return grid
