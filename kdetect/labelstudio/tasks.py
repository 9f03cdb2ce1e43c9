"""A Label Studio task's image: where it lives and its pixels.

A task's ``data`` holds the image under the label config's key (``$image`` -> ``data["image"]``)
as one of:

* ``/data/upload/<project>/<file>``: a file uploaded to Label Studio;
* ``/data/local-files/?d=<path>``: a file Label Studio serves from local storage;
* ``http(s)://...``: a URL; on Label Studio's own host it gets the API key, elsewhere none;
* a local path (or ``file://`` URL) readable by kdetect.

The first two are resolved against the Label Studio URL and fetched with the API key
(:class:`~kdetect.labelstudio.client.LabelStudioClient`); without credentials they are an error
that says so.
"""

from __future__ import annotations

import http.client
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdetect.errors import KdetectError
from kdetect.labelstudio.client import TIMEOUT_S, LabelStudioClient
from kdetect.serve.images import Limits, UploadError, decode_upload

LABEL_STUDIO_PREFIXES = ("/data/upload/", "/data/local-files/")


class TaskError(KdetectError):
    """A task without a usable image (missing field, unreachable URL, not an image)."""


@dataclass(frozen=True)
class ImageSource:
    """Where a task's image is: ``kind`` is ``label-studio``, ``http`` or ``file``."""

    kind: str
    location: str


def resolve_image(value: str, label_studio_url: str | None) -> ImageSource:
    """Classify a task's image reference (see the module docstring)."""
    if not isinstance(value, str) or not value.strip():
        raise TaskError(f"task image: expected a URL or path, got {value!r}")
    if value.startswith(LABEL_STUDIO_PREFIXES):
        return ImageSource("label-studio", value)
    parts = urllib.parse.urlsplit(value)
    if parts.scheme in ("http", "https"):
        if label_studio_url and _same_origin(value, label_studio_url):
            return ImageSource("label-studio", value)
        return ImageSource("http", value)
    if parts.scheme == "file":
        return ImageSource("file", urllib.request.url2pathname(parts.path))
    if parts.scheme and len(parts.scheme) > 1:
        raise TaskError(f"task image: unsupported URL scheme {parts.scheme!r} in {value!r}")
    return ImageSource("file", value)


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def image_value(task: dict, key: str) -> str:
    """The image reference of ``task`` under ``key`` (the label config's ``$key``)."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        raise TaskError("task: no 'data' object")
    if key not in data:
        raise TaskError(f"task {task.get('id', '?')}: no data.{key} (the label config's ${key})")
    return data[key]


def read_bytes(source: ImageSource, client: LabelStudioClient | None, limits: Limits) -> bytes:
    """The encoded image at ``source``, at most ``limits.max_bytes``."""
    if source.kind == "label-studio":
        if client is None:
            raise TaskError(
                f"{urllib.parse.urlsplit(source.location).path}: a Label Studio URL needs "
                "--label-studio-url and --label-studio-key (or LABEL_STUDIO_URL/_API_KEY)"
            )
        return client.download(source.location, limits.max_bytes)
    if source.kind == "http":
        try:
            with urllib.request.urlopen(source.location, timeout=TIMEOUT_S) as response:
                return response.read(limits.max_bytes + 1)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise TaskError(f"{source.location}: cannot download ({exc})") from None
    try:
        path = Path(source.location)
        if not path.is_file():
            raise TaskError(f"{path}: no such image file")
        with open(path, "rb") as handle:
            return handle.read(limits.max_bytes + 1)
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, no permission
        raise TaskError(f"{source.location[:200]}: cannot read ({exc})") from None


def load_task_image(
    task: dict, key: str, client: LabelStudioClient | None, limits: Limits
) -> tuple[np.ndarray, bytes]:
    """``(uint8 [H, W, 3] pixels, encoded bytes)`` of ``task``'s image."""
    value = image_value(task, key)
    url = client.url if client is not None else None
    data = read_bytes(resolve_image(value, url), client, limits)
    try:
        return decode_upload(data, limits), data
    except UploadError as exc:
        raise TaskError(f"task {task.get('id', '?')} ({value}): {exc.message}") from None
