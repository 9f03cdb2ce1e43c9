"""A real Label Studio for the tests: found, started on a free port of 127.0.0.1 with SQLite in
a temporary folder, a user with a Personal Access Token, and a small JSON API helper.

The binary is ``$KDETECT_LABEL_STUDIO`` (``make test`` sets it to ``.venv-labelstudio``'s), else
``.venv-labelstudio/bin/label-studio`` in the checkout, else ``label-studio`` on the PATH.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USER = "kdetect@example.com"
PASSWORD = "kdetect-test-password"
START_TIMEOUT_S = 900


def find_label_studio() -> str | None:
    """The ``label-studio`` executable to test against, or ``None``."""
    configured = os.environ.get("KDETECT_LABEL_STUDIO")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    local = ROOT / ".venv-labelstudio" / "bin" / "label-studio"
    if os.access(local, os.X_OK):
        return str(local)
    return shutil.which("label-studio")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LabelStudio:
    """``label-studio start`` in its own process group; ``key`` is a Personal Access Token."""

    def __init__(self, binary: str, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.log_path = folder / "label-studio.log"
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(folder / "data"),
            "DJANGO_DB": "sqlite",
            # kdetect's backend runs on 127.0.0.1: let Label Studio call it (ML requests) and
            # register its /webhook (webhook URLs are checked separately).
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LOCAL_FILES_SERVING_ENABLED": "true",
            "LOCAL_FILES_DOCUMENT_ROOT": str(folder),
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        }
        command = [
            binary,
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(folder / "data"),
            "--username",
            USER,
            "--password",
            PASSWORD,
        ]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.key = None
        self._access = None

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"label-studio exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"label-studio did not start in {START_TIMEOUT_S} s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()

    def create_token(self) -> str:
        """Log in through the web form (session + CSRF) and create a Personal Access Token."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(self.url + "/user/login/", timeout=30).read()
        form = {
            "csrfmiddlewaretoken": _cookie(jar, "csrftoken"),
            "email": USER,
            "password": PASSWORD,
        }
        login = urllib.request.Request(
            self.url + "/user/login/",
            urllib.parse.urlencode(form).encode(),
            headers={"Referer": self.url + "/user/login/"},
        )
        opener.open(login, timeout=30).read()
        create = urllib.request.Request(
            self.url + "/api/token/",
            b"{}",
            method="POST",
            headers={
                "X-CSRFToken": _cookie(jar, "csrftoken"),
                "Referer": self.url + "/",
                "Content-Type": "application/json",
            },
        )
        with opener.open(create, timeout=30) as response:
            self.key = json.loads(response.read())["token"]
        return self.key

    def _bearer(self) -> str:
        if self._access is None:
            self._access = self.api(
                "POST", "/api/token/refresh", {"refresh": self.key}, auth=False
            )["access"]
        return f"Bearer {self._access}"

    def api(self, method: str, path: str, payload=None, auth: bool = True, files=None):
        """A JSON request (or multipart ``files``: ``{name: (filename, bytes)}``)."""
        headers, body = {}, None
        if files is not None:
            body, content_type = _multipart(files)
            headers["Content-Type"] = content_type
        elif payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = self._bearer()
        request = urllib.request.Request(self.url + path, body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None
        return json.loads(data) if data else None


def _cookie(jar, name: str) -> str:
    return next(cookie.value for cookie in jar if cookie.name == name)


def _multipart(files: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
