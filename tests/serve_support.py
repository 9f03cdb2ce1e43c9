"""Shared helpers of the serving tests: the tiny run's model loaded once, a live uvicorn server.

The model comes from the session's tiny shapes run (``tests.train_support.tiny_run``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdetect.apps.serve.background import BackgroundServer
from tests.train_support import tiny_run

_CACHE: dict = {}


def loaded_model(tmp_path_factory):
    """``(run_dir, model, classes)`` of the tiny run, loaded once per session."""
    if "model" not in _CACHE:
        from kdetect.runs import load_model

        run = tiny_run(tmp_path_factory)
        model, classes = load_model(run)
        _CACHE["model"] = (run, model, classes)
    return _CACHE["model"]


def serve_app(tmp_path_factory, **kwargs):
    """The kdetect FastAPI app over the tiny run (one per session unless ``kwargs``)."""
    from kdetect.apps.serve import create_app

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


LiveServer = BackgroundServer


CHROMIUM = os.environ.get("KDETECT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium():
    """(playwright, browser): Debian's headless chromium driven by playwright; skips the test when
    either is missing or the browser cannot start."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as exc:  # a broken browser install is a skip, not a failure
        playwright.stop()
        pytest.skip(f"cannot launch {CHROMIUM}: {str(exc).splitlines()[0]}")
    return playwright, browser
