"""Reading images from disk the same way everywhere: Pillow, EXIF orientation honoured, RGB out.

Readers only check that an image exists (cheap); ``kdetect dataset transform`` and the pipeline
decode with :func:`load_image`, which turns every failure (missing, unreadable, corrupt or
truncated file) into a one-line :class:`~kdetect.plumbing.errors.DataError` naming the file.
``dataset inspect``, ``dataset transform`` and the start of ``train`` check every image first
with :func:`verify_images`, which reports all bad files at once.

Every image (file or upload) must fit the size limits below; they are checked from the header,
before any pixel is decoded, so a decompression bomb costs nothing. An image outside them raises
:class:`ImageSizeError` naming the limit. The limits live here only; ``kdetect serve`` may lower
``MAX_PIXELS`` with ``--max-pixels``.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kdetect.plumbing.errors import DataError, DataErrors

# EXIF tag 0x0112: orientation. Values 2..8 mean the stored pixels must be flipped/rotated.
_EXIF_ORIENTATION = 0x0112

#: Most pixels (width x height) of an image: 40 megapixels, e.g. 8000x5000. Larger images are
#: refused from their header (decompression bombs); 40 MP is ~120 MB as decoded RGB.
MAX_PIXELS = 40_000_000
#: Shortest accepted side in pixels; a detector finds nothing in a thinner image.
MIN_SIDE = 8
#: Largest accepted ratio of the long side to the short side. Beyond it the short side resizes
#: to (almost) nothing at the model's input size and the model cannot run.
MAX_ASPECT_RATIO = 20.0


class ImageSizeError(DataError):
    """An image outside the size limits; ``limit`` is ``"pixels"``, ``"side"`` or ``"aspect"``."""

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


def check_size(width: int, height: int, where: str, max_pixels: int = MAX_PIXELS) -> None:
    """Raise :class:`ImageSizeError` (``"{where}: ..."``) for an image outside the limits."""
    if width * height > max_pixels:
        raise ImageSizeError(
            f"{where}: {width}x{height} image has {width * height} pixels, over the limit of "
            f"{max_pixels} pixels",
            "pixels",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageSizeError(
            f"{where}: {width}x{height} image is too small; each side must be at least "
            f"{MIN_SIDE} pixels",
            "side",
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageSizeError(
            f"{where}: {width}x{height} image is too elongated; the long side may be at most "
            f"{MAX_ASPECT_RATIO:g} times the short side",
            "aspect",
        )


def _bomb(path, exc: Exception, max_pixels: int) -> ImageSizeError:
    """Pillow's own decompression-bomb refusal, worded like :func:`check_size`."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{found.group(1)} pixels" if found else "too many pixels"
    return ImageSizeError(
        f"{path}: image has {pixels}, over the limit of {max_pixels} pixels", "pixels"
    )


def _open(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image (header only) and check its size against the limits."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise _bomb(path, exc, max_pixels) from None
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise DataError(f"{path}: cannot read image ({exc.strerror})") from None
    except OSError as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None
    try:
        check_size(*image.size, str(path), max_pixels)
    except ImageSizeError:
        image.close()
        raise
    return image


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


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file to uint8 ``[H, W, 3]`` RGB, EXIF orientation applied.

    Grayscale, palette, 16-bit and RGBA images become RGB (transparent areas black). Raises
    ``DataError`` naming the file when it is missing, not an image, corrupt or truncated, and
    :class:`ImageSizeError` when it is outside the size limits (checked before decoding).
    """
    with _open(path, max_pixels) as image:
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


def verify_image(path: str | os.PathLike) -> None:
    """Check an image without keeping its pixels: header, size limits and data.

    JPEGs are decoded at 1/8 scale (every byte is still read, so truncation shows), PNGs are
    checked chunk by chunk (``Image.verify``), other formats are decoded. Raises ``DataError``.
    """
    with _open(path) as image:
        fmt = (image.format or "").upper()
        try:
            if fmt == "PNG":
                image.verify()
            else:
                if fmt == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: corrupt or truncated image ({exc})") from None


def find_bad_images(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """:func:`verify_image` every file (in parallel): ``{path: error line}`` of the bad ones."""

    def check(path) -> str | None:
        try:
            verify_image(path)
        except DataError as exc:
            return str(exc)
        return None

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # Pillow decodes without holding the GIL
        found = pool.map(check, paths)
        return {str(p): line for p, line in zip(paths, found, strict=True) if line is not None}


def bad_images_error(problems: list[str], total: int, what: str = "images") -> DataErrors:
    """The error for ``problems``: one line each, then ``"2 of 364 images cannot be used"``."""
    return DataErrors(problems, f"{len(problems)} of {total} {what} cannot be used")


def verify_images(paths: Sequence[str | os.PathLike], what: str = "images") -> None:
    """Check every file; raise :func:`bad_images_error` naming all the bad ones."""
    unique = list(dict.fromkeys(str(p) for p in paths))
    problems = find_bad_images(unique)
    if problems:
        raise bad_images_error(list(problems.values()), len(unique), what)
