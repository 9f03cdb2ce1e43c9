"""Options that several commands share, written once: the dataset formats (from the readers'
registry, so a new reader shows in every command), the invalid-box policy, class lists, image
folders. (The leading underscore keeps this module out of the command modules
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
