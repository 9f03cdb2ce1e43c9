"""Talking to Label Studio: credentials, authenticated requests, the export of a project.

Label Studio accepts two kinds of API key. A legacy token goes as ``Authorization: Token KEY``.
A Personal Access Token (1.14+) is a JWT *refresh* token: it is exchanged at
``POST /api/token/refresh`` for a short-lived access token sent as ``Authorization: Bearer``,
exchanged again when Label Studio answers 401. The key never appears in a log line, a message or
``repr``.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from kdetect.plumbing.errors import KdetectError

ENV_URL = "LABEL_STUDIO_URL"
ENV_KEY = "LABEL_STUDIO_API_KEY"
TIMEOUT_S = 60


class LabelStudioError(KdetectError):
    """Label Studio cannot be reached, refused a request or sent something unexpected."""


@dataclass(frozen=True)
class Credentials:
    """Label Studio's URL and API key (from flags, else ``LABEL_STUDIO_URL``/``_API_KEY``)."""

    url: str | None = None
    key: str | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, url: str | None = None, key: str | None = None) -> Credentials:
        url = url or os.environ.get(ENV_URL) or None
        key = key or os.environ.get(ENV_KEY) or None
        return cls(url.rstrip("/") if url else None, key)

    def environment(self) -> dict[str, str]:
        """``LABEL_STUDIO_URL``/``_API_KEY`` for a child process (the ones that are set)."""
        values = {ENV_URL: self.url, ENV_KEY: self.key}
        return {name: value for name, value in values.items() if value}

    def require(self) -> Credentials:
        """These credentials, or a :class:`LabelStudioError` naming the missing flag/env."""
        if not self.url:
            raise LabelStudioError(f"no Label Studio URL: pass --label-studio-url or set {ENV_URL}")
        if not self.key:
            raise LabelStudioError(
                f"no Label Studio API key: pass --label-studio-key or set {ENV_KEY}"
            )
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            raise LabelStudioError(f"Label Studio URL must be http(s)://..., got {self.url!r}")
        return self


def _is_jwt(key: str) -> bool:
    return key.count(".") == 2 and key.startswith("ey")


class LabelStudioClient:
    """Authenticated JSON and file requests against one Label Studio."""

    def __init__(self, credentials: Credentials):
        self.credentials = credentials.require()
        self.url = self.credentials.url
        self._access: str | None = None

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.url!r})"

    def _authorization(self, renew: bool = False) -> str:
        key = self.credentials.key
        if not _is_jwt(key):
            return f"Token {key}"
        if self._access is None or renew:
            body = json.dumps({"refresh": key}).encode()
            answer = self._send("POST", "/api/token/refresh", body, {}, "exchanging the API key")
            self._access = json.loads(answer).get("access")
            if not self._access:
                raise LabelStudioError("Label Studio gave no access token for the API key")
        return f"Bearer {self._access}"

    def _send(self, method: str, url: str, body: bytes | None, headers: dict, what: str) -> bytes:
        full = urllib.parse.urljoin(self.url + "/", url)
        request = urllib.request.Request(full, body, method=method, headers=headers)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise LabelStudioError(
                f"Label Studio answered {exc.code} {exc.reason} {what} ({_path(full)})"
            ) from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} ({reason})") from None

    def request(self, method: str, path: str, payload=None, what: str = "") -> bytes:
        """``method path`` with the API key; one retry with a fresh access token on 401."""
        body = None if payload is None else json.dumps(payload).encode()
        what = what or f"to {method} {path}"
        try:
            return self._send(method, path, body, {"Authorization": self._authorization()}, what)
        except LabelStudioError as exc:
            if " 401 " not in str(exc) or not _is_jwt(self.credentials.key):
                raise
        auth = {"Authorization": self._authorization(renew=True)}
        return self._send(method, path, body, auth, what)

    def get_json(self, path: str, what: str = ""):
        data = self.request("GET", path, what=what)
        try:
            return json.loads(data)
        except ValueError:
            raise LabelStudioError(f"Label Studio sent no JSON for {path}") from None

    def download(self, url: str, max_bytes: int) -> bytes:
        """The file at ``url`` (a path on Label Studio or a full URL on its host)."""
        data = self.request("GET", url, what="downloading an image")
        if len(data) > max_bytes:
            raise LabelStudioError(f"{_path(url)}: {len(data)} bytes is over {max_bytes} bytes")
        return data

    def export_tasks(self, project: int) -> list[dict]:
        """Every annotated task of ``project`` with its annotations (the JSON export)."""
        tasks = self.get_json(
            f"/api/projects/{int(project)}/export?exportType=JSON&download_all_tasks=false",
            what=f"exporting project {project}",
        )
        if not isinstance(tasks, list):
            raise LabelStudioError(f"project {project}: the export is not a list of tasks")
        return tasks

    def project(self, project: int) -> dict:
        return self.get_json(f"/api/projects/{int(project)}", what=f"reading project {project}")


def _path(url: str) -> str:
    """``url`` without its query (a signed URL may carry a secret there)."""
    parts = urllib.parse.urlsplit(url)
    return parts.path or url
