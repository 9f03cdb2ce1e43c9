"""Shared helpers of the serving tests: the tiny run's model loaded once, a live uvicorn server.

The model comes from the session's tiny shapes run (``test_cli_train_support.tiny_run``).
"""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
from PIL import Image
from test_cli_train_support import tiny_run

_CACHE: dict = {}


def loaded_model(tmp_path_factory):
    """``(run_dir, model, classes)`` of the tiny run, loaded once per session."""
    if "model" not in _CACHE:
        from kdetect.recipes.runs import load_model

        run = tiny_run(tmp_path_factory)
        model, classes = load_model(run)
        _CACHE["model"] = (run, model, classes)
    return _CACHE["model"]


def serve_app(tmp_path_factory, **kwargs):
    """The kdetect FastAPI app over the tiny run (one per session unless ``kwargs``)."""
    from kdetect.serve import create_app

    key = ("app", tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        run, model, classes = loaded_model(tmp_path_factory)
        _CACHE[key] = create_app(model, classes, run=run, **kwargs)
    return _CACHE[key]


def sample_image(run) -> np.ndarray:
    """A validation image of the run (64x64 shapes)."""
    path = sorted((run / "samples").glob("*.png"))[0]
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


class LiveServer:
    """A real uvicorn server on a free port of 127.0.0.1, in a background thread."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
