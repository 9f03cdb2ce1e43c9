"""Decoding uploaded images with limits on bytes and pixels (decompression bombs)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from kdetect.errors import DataError


@dataclass(frozen=True)
class Limits:
    """What an upload may be: at most ``max_bytes`` encoded and ``max_pixels`` decoded."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


class UploadError(Exception):
    """A rejected upload; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def decode_upload(data: bytes, limits: Limits) -> np.ndarray:
    """Encoded image bytes -> uint8 ``[H, W, 3]`` RGB (EXIF orientation applied).

    Raises :class:`UploadError` with 413 when the upload is over ``limits`` (checked from the
    header, before any pixel is decoded) and 400 when it is empty, not an image or truncated.
    """
    from kdetect.data.images import load_image

    if not data:
        raise UploadError(400, "image: the upload is empty")
    if len(data) > limits.max_bytes:
        raise UploadError(
            413, f"image: {len(data)} bytes is over the limit of {limits.max_bytes} bytes"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
        except Image.DecompressionBombError as exc:
            raise UploadError(413, f"image: too many pixels ({exc})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise UploadError(
                400, "image: not a readable image (JPEG, PNG, GIF, BMP, TIFF or WebP expected)"
            ) from None
        if width * height > limits.max_pixels:
            raise UploadError(
                413,
                f"image: {width}x{height} = {width * height} pixels is over the limit of "
                f"{limits.max_pixels} pixels",
            )
        if width < 1 or height < 1:
            raise UploadError(400, f"image: empty image ({width}x{height})")
        try:
            return load_image(io.BytesIO(data))
        except DataError as exc:
            reason = str(exc).split(": ", 1)[-1]
            raise UploadError(400, f"image: {reason}") from None
        except Image.DecompressionBombError as exc:
            raise UploadError(413, f"image: too many pixels ({exc})") from None
