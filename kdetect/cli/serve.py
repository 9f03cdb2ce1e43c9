"""``kdetect serve``: the web page and JSON API over a trained detector (kdetect.apps.serve)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from kdetect.cli import app, err_console
from kdetect.cli.labelstudio import (
    LABEL_STUDIO_KEY,
    LABEL_STUDIO_URL,
    RETRAIN_SET,
    TRAINING_DIR,
    label_studio_options,
)


@app.command("serve")
def serve(
    model: Annotated[
        Path,
        typer.Argument(help="Run directory, .keras file or packed .kdet run.", show_default=False),
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind (0.0.0.0 exposes it to the network).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 5000,
    workers: Annotated[
        int, typer.Option(help="Server processes (each loads its own copy of the model).", min=1)
    ] = 1,
    max_bytes: Annotated[int, typer.Option(help="Largest accepted upload in bytes.", min=1)] = 20
    * 1024
    * 1024,
    max_pixels: Annotated[
        int, typer.Option(help="Largest accepted image in pixels (width x height).", min=1)
    ] = 40_000_000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    label_studio_url: Annotated[str | None, LABEL_STUDIO_URL] = None,
    label_studio_key: Annotated[str | None, LABEL_STUDIO_KEY] = None,
    retrain_set: Annotated[list[str] | None, RETRAIN_SET] = None,
    training_dir: Annotated[Path | None, TRAINING_DIR] = None,
    allow_image_root: Annotated[
        list[Path] | None,
        typer.Option(
            help="Folder whose images Label Studio tasks may name by local path (repeatable). "
            "Beyond 127.0.0.1 (or with any --allow-image-... flag), paths elsewhere are refused.",
        ),
    ] = None,
    allow_image_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Host whose http(s) image URLs Label Studio tasks may name (repeatable). "
            "Beyond 127.0.0.1 (or with any --allow-image-... flag), other hosts are refused; "
            "Label Studio's own uploads and URLs are always read.",
        ),
    ] = None,
) -> None:
    """Serve a page (upload an image, see boxes) and a JSON API (POST /api/predict)."""
    from kdetect.plumbing.errors import KdetectError
    from kdetect.runs import inspect_run

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise KdetectError(f"kdetect serve needs fastapi and uvicorn ({exc})") from None
    from kdetect.apps.labelstudio import ImagePolicy
    from kdetect.apps.serve import Limits
    from kdetect.apps.serve import serve as run_server

    info = inspect_run(model)  # a missing or unknown path fails here, before TensorFlow starts
    options = label_studio_options(
        label_studio_url, label_studio_key, retrain_set, training_dir, Path(info.path)
    )
    options.images = ImagePolicy.for_server(host, allow_image_root or (), allow_image_host or ())
    if workers > 1:
        os.environ.update(options.credentials.environment())
    err_console.print(f"serving {model} on http://{host}:{port}/", highlight=False)
    run_server(
        model,
        host=host,
        port=port,
        workers=workers,
        limits=Limits(max_bytes=max_bytes, max_pixels=max_pixels),
        log_level=log_level,
        label_studio=options,
    )
