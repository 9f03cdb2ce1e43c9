"""Decoding uploaded images with limits on bytes and pixels (decompression bombs).

The size limits (pixels, shortest side, aspect ratio) are those of :mod:`kdetect.data.images`,
the one place that defines them; only ``max_pixels`` may be lowered per server.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from kdetect.data.images import MAX_PIXELS, ImageSizeError, load_image
from kdetect.plumbing.errors import DataError


@dataclass(frozen=True)
class Limits:
    """What an upload may be: at most ``max_bytes`` encoded and ``max_pixels`` decoded."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = MAX_PIXELS


class UploadError(Exception):
    """A rejected upload; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def decode_upload(data: bytes, limits: Limits) -> np.ndarray:
    """Encoded image bytes -> uint8 ``[H, W, 3]`` RGB (EXIF orientation applied).

    Raises :class:`UploadError` with 413 when the upload is over ``limits`` (bytes, or pixels
    checked from the header before any pixel is decoded) and 400 when it is empty, not an image,
    truncated, thinner than the shortest side or more elongated than the aspect-ratio limit.
    """
    if not data:
        raise UploadError(400, "image: the upload is empty")
    if len(data) > limits.max_bytes:
        raise UploadError(
            413, f"image: {len(data)} bytes is over the limit of {limits.max_bytes} bytes"
        )
    try:
        return load_image(io.BytesIO(data), max_pixels=limits.max_pixels)
    except ImageSizeError as exc:
        reason = str(exc).split(": ", 1)[-1]
        raise UploadError(413 if exc.limit == "pixels" else 400, f"image: {reason}") from None
    except DataError as exc:
        reason = str(exc).split(": ", 1)[-1]
        if "not a readable image" in reason:
            reason = "not a readable image (JPEG, PNG, GIF, BMP, TIFF or WebP expected)"
        raise UploadError(400, f"image: {reason}") from None
