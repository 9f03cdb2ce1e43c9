"""Options that several commands share, written once: the dataset formats (from the readers'
registry, so a new reader shows in every command), the invalid-box policy, class lists, image
folders, the network's frame. (The leading underscore keeps this module out of the command modules
:func:`kdetect.cli._register_commands` imports.)"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kdetect.data.readers import FORMATS  # light: no TensorFlow

SourceType = Enum("SourceType", {name: name for name in FORMATS}, type=str)
InspectType = Enum("InspectType", {name: name for name in (*FORMATS, "tfrecord")}, type=str)


class InvalidBoxPolicy(str, Enum):
    error = "error"
    clip = "clip"
    drop = "drop"


SourceOption = Annotated[SourceType, typer.Option("--type", help="Format of the source dataset.")]
ClassesOption = Annotated[
    str | None,
    typer.Option(
        help="Class names (label id = position): comma-separated, or a file (classes.json or "
        "one name per line)."
    ),
]
InvalidBoxOption = Annotated[
    InvalidBoxPolicy, typer.Option(help="What to do with a box outside the image or empty.")
]
ImagesDirOption = Annotated[
    Path | None, typer.Option(help="Folder of the images, when not the usual place.")
]


def parse_image_size(value: str | None) -> tuple[int, int] | None:
    """``--image-size``: ``H,W`` (or ``HxW``) or one ``N`` for a square, as ``(H, W)``."""
    if value is None:
        return None
    parts = [p.strip() for p in value.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise typer.BadParameter(f"expected H,W or N, got {value!r}")
    return int(parts[0]), int(parts[1])


def image_size_option(help: str) -> typer.Option:
    """An ``--image-size H,W`` option (read by :func:`parse_image_size`)."""
    return typer.Option(
        "--image-size", metavar="H,W", help=help, callback=parse_image_size, show_default=False
    )
