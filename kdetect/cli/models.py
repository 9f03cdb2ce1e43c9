"""``kdetect models``: the detector types a recipe can name and the torchvision checkpoints
``kdetect checkpoint import --arch`` reads (from the model registry; no TensorFlow)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from kdetect.cli import app

console = Console()


@app.command("models")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the model types (recipe model.type) and the torchvision architectures each imports."""
    from rich.table import Table

    from kdetect.models.registry import MODEL_TYPES

    if as_json:
        rows = {
            entry.name: {"summary": entry.summary, "torchvision": list(entry.architectures)}
            for entry in MODEL_TYPES.values()
        }
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="model types (recipe model.type; checkpoint import --arch)")
    for column in ("model.type", "what it is", "torchvision --arch"):
        table.add_column(column)
    for entry in MODEL_TYPES.values():
        table.add_row(entry.name, entry.summary, "\n".join(entry.architectures))
    console.print(table)
