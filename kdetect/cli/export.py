"""``kdetect export``: SavedModel for TF Serving, ONNX and TFLite (see kdetect.apps.export).

``kdetect.apps.export`` is imported inside the command: ``kdetect --help`` imports every command
module and must not load TensorFlow.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kdetect.cli import app, err_console


class ExportFormat(str, Enum):
    """kdetect.apps.export.FORMATS (tests/cli/test_cli_conventions.py checks they agree),
    written here so that ``kdetect --help`` does not import TensorFlow."""

    saved_model = "saved_model"
    onnx = "onnx"
    tflite = "tflite"


@app.command("export")
def export(
    model: Annotated[
        Path,
        typer.Argument(
            help="Run directory, .keras file or packed .kdet run.",
            show_default=False,
        ),
    ],
    format: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="What to write.")
    ] = ExportFormat.saved_model,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write (default: exported/NAME for saved_model, "
            "exported/NAME.tflite or NAME.onnx otherwise).",
        ),
    ] = None,
    input_type: Annotated[
        str,
        typer.Option(
            help="Input of serving_default: encoded_image_string_tensor (bytes) or image_tensor "
            "(uint8 [B,H,W,3]). Both signatures are always written."
        ),
    ] = "encoded_image_string_tensor",
    quantize: Annotated[
        str | None,
        typer.Option(
            help="TFLite: float16 (half-size weights) or dynamic (int8 weights).",
            show_default=False,
        ),
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.", min=11)] = 17,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an existing OUTPUT (swapped in only once the new export is complete).",
        ),
    ] = False,
) -> None:
    """Export a trained detector for serving (TF Object Detection API output names)."""
    from kdetect.apps.export import check_options
    from kdetect.apps.export import export as run_export

    format = format.value
    check_options(format, quantize)
    if output is None:
        name = model.name.removesuffix(".kdet").removesuffix(".keras") or "model"
        suffix = {"saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}[format]
        output = Path("exported") / f"{name}{suffix}"
    path = run_export(
        model,
        output,
        format=format,
        input_type=input_type,
        quantize=quantize,
        opset=opset,
        overwrite=overwrite,
    )
    err_console.print(f"wrote {format} to {path}", highlight=False)
