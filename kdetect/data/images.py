"""Reading images from disk the same way everywhere: Pillow, EXIF orientation honoured, RGB out.

Readers only check that an image exists (cheap); ``kdetect dataset transform`` and the pipeline
decode with :func:`load_image`, which turns every failure (missing, unreadable, corrupt or
truncated file) into a one-line :class:`~kdetect.errors.DataError` naming the file.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kdetect.errors import DataError

# EXIF tag 0x0112: orientation. Values 2..8 mean the stored pixels must be flipped/rotated.
_EXIF_ORIENTATION = 0x0112


def _open(path: str | os.PathLike) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise DataError(f"{path}: cannot read image ({exc.strerror})") from None
    except OSError as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None


def _needs_transpose(image: Image.Image) -> bool:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block should not make a good image unreadable
        return False
    return orientation not in (None, 0, 1)


def _to_rgb(image: Image.Image, path: str | os.PathLike) -> Image.Image:
    """Decode fully, apply EXIF orientation and convert to 8-bit RGB."""
    try:
        image.load()  # raises on truncated / corrupt data (Pillow default: no truncated loads)
        if _needs_transpose(image):
            image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            if image.mode in ("RGBA", "LA", "PA") or (
                image.mode == "P" and "transparency" in image.info
            ):
                # Composite transparent pixels on black, the colour of the pipeline's padding.
                rgba = image.convert("RGBA")
                background = Image.new("RGB", rgba.size, (0, 0, 0))
                background.paste(rgba, mask=rgba.getchannel("A"))
                image = background
            elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float32)
                scale = 255.0 / max(float(array.max()), 1.0)
                image = Image.fromarray((array * scale).astype(np.uint8)).convert("RGB")
            else:
                image = image.convert("RGB")
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None
    return image


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 ``[H, W, 3]`` RGB, EXIF orientation applied.

    Grayscale, palette, 16-bit and RGBA images become RGB (transparent areas black). Raises
    ``DataError`` naming the file when it is missing, not an image, corrupt or truncated.
    """
    with _open(path) as image:
        rgb = _to_rgb(image, path)
        return np.asarray(rgb, dtype=np.uint8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed (after EXIF rotation), read from the header."""
    with _open(path) as image:
        width, height = image.size
        if _needs_transpose(image):
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            if orientation in (5, 6, 7, 8):  # 90 or 270 degree rotations swap the axes
                width, height = height, width
        return int(width), int(height)


def encode_for_record(path: str | os.PathLike) -> tuple[bytes, str, int, int]:
    """Validate an image and return ``(bytes, format, width, height)`` to store in a TFRecord.

    The image is decoded fully (so a corrupt or truncated file fails here, not during training).
    A plain RGB or grayscale JPEG/PNG without EXIF rotation is stored byte for byte (TensorFlow
    decodes it to the same pixels); anything else (EXIF-rotated, RGBA, palette, 16-bit, other
    formats) is stored as the PNG of its RGB pixels, so the pipeline never has to know.
    """
    with _open(path) as image:
        fmt = (image.format or "").upper()
        keep_bytes = (
            fmt in ("JPEG", "PNG") and image.mode in ("RGB", "L") and not _needs_transpose(image)
        )
        rgb = _to_rgb(image, path)
        width, height = rgb.size
        if keep_bytes:
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError as exc:
                raise DataError(f"{path}: cannot read image ({exc})") from None
            return data, "jpeg" if fmt == "JPEG" else "png", width, height
        buffer = io.BytesIO()
        rgb.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue(), "png", width, height
