"""A Label Studio task's image: where it lives and its pixels.

A task's ``data`` holds the image under the label config's key (``$image`` -> ``data["image"]``)
as one of:

* ``/data/upload/<project>/<file>``: a file uploaded to Label Studio;
* ``/data/local-files/?d=<path>``: a file Label Studio serves from local storage;
* ``http(s)://...``: a URL; on Label Studio's own host it gets the API key, elsewhere none;
* a local path (or ``file://`` URL) readable by kdetect.

The first two are resolved against the Label Studio URL and fetched with the API key
(:class:`~kdetect.apps.labelstudio.client.LabelStudioClient`); without credentials they are an error
that says so.

:class:`ImagePolicy` says which of the others a server may read. A server bound to 127.0.0.1
reads any of them; one bound beyond it (or given an allow-list) reads local paths only under its
``--allow-image-root`` folders and URLs only on its ``--allow-image-host`` hosts (Label Studio's
own uploads and URLs always). A read that fails raises :class:`ImageReadError`, whose ``public``
message names the task and the image as given but not why (no file, no permission, a refused
port would tell a client what exists on the server); the detail is its ``str`` for the log.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdetect.apps.labelstudio.client import TIMEOUT_S, LabelStudioClient, LabelStudioError
from kdetect.apps.uploads import Limits, UploadError, decode_upload
from kdetect.plumbing.errors import KdetectError

LABEL_STUDIO_PREFIXES = ("/data/upload/", "/data/local-files/")


class TaskError(KdetectError):
    """A task without a usable image (missing field, unreachable URL, not an image)."""


class ImageReadError(TaskError):
    """A task's image that could not be read, downloaded or decoded: ``str`` is the detail (for
    the server's log), ``public`` what a client is told."""

    def __init__(self, detail: str, public: str):
        super().__init__(detail)
        self.public = public


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ImagePolicy:
    """Which task images the server may read besides Label Studio's own (see the module
    docstring). ``restricted`` off reads any path or URL; on, only paths under ``roots`` and URLs
    on ``hosts``."""

    restricted: bool = False
    roots: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    @classmethod
    def for_server(
        cls, host: str, roots: Sequence[str | os.PathLike] = (), hosts: Sequence[str] = ()
    ) -> ImagePolicy:
        """The policy of a server bound to ``host``: restricted beyond loopback or with an
        allow-list; roots resolved (symlinks followed), hosts lower-cased."""
        roots = tuple(os.path.realpath(os.fspath(root)) for root in roots)
        hosts = tuple(host_name.strip().lower() for host_name in hosts)
        return cls(not is_loopback(host) or bool(roots or hosts), roots, hosts)

    def check(self, source: ImageSource, shown: str) -> None:
        """Refuse ``source`` (``shown``: the reference as the task gave it) when not allowed."""
        if not self.restricted or source.kind == "label-studio":
            return
        if source.kind == "http":
            if not self.allows_url(source.location):
                raise TaskError(
                    f"task image {shown}: host not in this server's --allow-image-host list"
                )
            return
        real = os.path.realpath(source.location)
        if not any(os.path.commonpath((real, root)) == root for root in self.roots):
            raise TaskError(
                f"task image {shown}: not under this server's --allow-image-root folders"
            )

    def allows_url(self, url: str) -> bool:
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        return not self.restricted or host in self.hosts


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a host the policy allows (an allowed host could otherwise
    point the server at a refused one)."""

    def __init__(self, policy: ImagePolicy):
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not self.policy.allows_url(newurl):
            raise urllib.error.HTTPError(
                newurl, code, "redirect to a host not in --allow-image-host", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


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


def read_bytes(
    source: ImageSource,
    client: LabelStudioClient | None,
    limits: Limits,
    policy: ImagePolicy | None = None,
) -> bytes:
    """The encoded image at ``source``, at most ``limits.max_bytes``; ``TaskError`` when it
    cannot be read (the detail in the message)."""
    if source.kind == "label-studio":
        if client is None:
            raise TaskError(
                f"{urllib.parse.urlsplit(source.location).path}: a Label Studio URL needs "
                "--label-studio-url and --label-studio-key (or LABEL_STUDIO_URL/_API_KEY)"
            )
        return client.download(source.location, limits.max_bytes)
    if source.kind == "http":
        opener = urllib.request.build_opener(_CheckedRedirects(policy or ImagePolicy()))
        try:
            with opener.open(source.location, timeout=TIMEOUT_S) as response:
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
    task: dict,
    key: str,
    client: LabelStudioClient | None,
    limits: Limits,
    policy: ImagePolicy | None = None,
) -> tuple[np.ndarray, bytes]:
    """``(uint8 [H, W, 3] pixels, encoded bytes)`` of ``task``'s image.

    Raises :class:`TaskError` for a task without a usable reference or one ``policy`` refuses,
    and :class:`ImageReadError` when the image cannot be read, downloaded or decoded.
    """
    value = image_value(task, key)
    url = client.url if client is not None else None
    source = resolve_image(value, url)
    shown = repr(value[:200])
    (policy or ImagePolicy()).check(source, shown)
    public = f"task {task.get('id', '?')}: cannot read image {shown}"
    try:
        data = read_bytes(source, client, limits, policy)
    except LabelStudioError as exc:
        raise ImageReadError(str(exc), public) from None
    except TaskError as exc:
        if source.kind == "label-studio":  # no credentials: a setting, not what exists
            raise
        raise ImageReadError(str(exc), public) from None
    try:
        return decode_upload(data, limits), data
    except UploadError as exc:
        detail = f"task {task.get('id', '?')} ({value}): {exc.message}"
        raise ImageReadError(detail, public) from None
