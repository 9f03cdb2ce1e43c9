"""A built-in synthetic dataset: coloured circles, rectangles and triangles on textured backgrounds.

It needs no download, is deterministic by seed, and is hard enough that a detector must learn
real features (textured, coloured backgrounds; objects of several sizes and aspect ratios; up to
``max_objects`` per image, sometimes touching) yet easy enough that a tiny network learns it on a
CPU in minutes. Used by the README demo (``recipes/shapes.yaml``) and the end-to-end test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from kdetect.data.records import Annotations, Record

CLASSES = ["circle", "rectangle", "triangle"]


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A smooth colour field plus a little pixel noise and, sometimes, stripes."""
    coarse = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0.0, 12.0, size=pixels.shape)
    if rng.random() < 0.5:
        period = rng.uniform(6, 20)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:height, 0:width]
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        pixels += (stripes * rng.uniform(8, 25))[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _covered(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of the smaller of two boxes that their intersection covers."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def _colour(rng: np.random.Generator, background_mean: np.ndarray) -> tuple[int, int, int]:
    """A saturated colour that stands out from the background's mean colour."""
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        colour[rng.integers(0, 3)] = rng.choice([rng.integers(0, 50), rng.integers(205, 256)])
        if np.abs(colour - background_mean).sum() > 150:
            break
    return tuple(int(c) for c in colour)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: int, box: np.ndarray, colour) -> None:
    """Draw a filled shape whose pixels span ``box`` = [x1, y1, x2, y2) (x2, y2 exclusive)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    if kind == 0:
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=colour)
    elif kind == 1:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)
    else:
        apex = (x1 + x2 - 1) / 2.0
        draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), (apex, y1)], fill=colour)


def make_shapes_image(
    rng: np.random.Generator,
    image_size: tuple[int, int],
    min_objects: int = 1,
    max_objects: int = 4,
    size_range: tuple[float, float] = (0.15, 0.45),
    max_overlap: float = 0.1,  # of the smaller box's area
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic image: ``(pixels uint8 [H, W, 3], boxes [M, 4] xyxy, labels [M])``."""
    height, width = image_size
    image = _background(rng, height, width)
    background_mean = np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0)
    draw = ImageDraw.Draw(image)
    boxes, labels = [], []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        for _attempt in range(30):
            side = rng.uniform(*size_range) * min(height, width)
            aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.7)))
            kind = int(rng.integers(0, len(CLASSES)))
            w = max(6, int(round(side * np.sqrt(aspect) if kind else side)))
            h = max(6, int(round(side / np.sqrt(aspect) if kind else side)))
            if w >= width or h >= height:
                continue
            x1 = int(rng.integers(0, width - w + 1))
            y1 = int(rng.integers(0, height - h + 1))
            box = np.array([x1, y1, x1 + w, y1 + h], dtype=np.float32)
            if all(_covered(box, other) <= max_overlap for other in boxes):
                _draw_shape(draw, kind, box, _colour(rng, background_mean))
                boxes.append(box)
                labels.append(kind)
                break
    image = image.filter(ImageFilter.GaussianBlur(radius=0.6))
    return (
        np.asarray(image, dtype=np.uint8),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int32),
    )


def make_shapes(
    num_images: int,
    image_size: Sequence[int] = (128, 128),
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 4,
    size_range: tuple[float, float] = (0.15, 0.45),
) -> Annotations:
    """Generate ``num_images`` synthetic images with their boxes, held in memory.

    Image ``i`` depends only on ``(seed, i)``, so a larger ``num_images`` extends a dataset
    without changing its first images, and two seeds give disjoint train/validation sets.

    Args:
        num_images: how many images.
        image_size: ``(height, width)`` in pixels.
        seed: dataset seed.
        min_objects, max_objects: objects per image (inclusive range).
        size_range: object side as a fraction of the image's shorter side.

    Returns:
        ``Annotations`` with classes ``["circle", "rectangle", "triangle"]`` and records whose
        ``image`` holds the pixels (``filename`` is a stable name such as ``shapes_0_000003.png``).
    """
    height, width = (int(image_size[0]), int(image_size[1]))
    records = []
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        pixels, boxes, labels = make_shapes_image(
            rng, (height, width), min_objects, max_objects, size_range
        )
        records.append(
            Record(
                filename=f"shapes_{seed}_{index:06d}.png",
                width=width,
                height=height,
                boxes=boxes,
                labels=labels,
                image=pixels,
                image_id=index,
            )
        )
    return Annotations(classes=list(CLASSES), records=records)


def save_images(annotations: Annotations, directory) -> list[str]:
    """Write the in-memory images of ``annotations`` as PNG files; returns their paths."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for record in annotations.records:
        path = directory / record.filename
        Image.fromarray(record.image).save(path)
        paths.append(str(path))
    return paths
