"""``kdetect train``: run a recipe (or resume a run)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kdetect.cli import app
from kdetect.cli._options import image_size_option
from kdetect.models.registry import MODEL_TYPES  # light: no TensorFlow

#: ``--model``'s choices: the registry's types.
ModelType = Enum("ModelType", {name: name for name in MODEL_TYPES}, type=str)


@app.command("train")
def train(
    recipe: Annotated[
        Path,
        typer.Argument(
            help="Recipe YAML file, or a run directory to continue with --resume.",
            show_default=False,
        ),
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            metavar="KEY=VALUE",
            help="Override a recipe value (YAML typed), e.g. --set train.epochs=3. Repeatable.",
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="Run directory to write (default: runs/NAME-TIMESTAMP, NAME the recipe's name)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run (RECIPE or --run-dir is the run directory).",
        ),
    ] = False,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs to train (train.epochs).", show_default=False)
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Images per step (data.batch_size).", show_default=False),
    ] = None,
    image_size: Annotated[  # (H, W) after the option's callback
        str | None,
        image_size_option("The network's frame (model.image_size): H,W or one size for a square."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Dataset folder (data.root).", show_default=False),
    ] = None,
    model_type: Annotated[
        ModelType | None,
        typer.Option(
            "--model",
            metavar="TYPE",
            help=f"Detector type (model.type): {', '.join(MODEL_TYPES)}.",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="cpu, or the GPU ids to use (0 or 0,1); default: every visible GPU.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train a detector from a recipe; writes a run directory.

    Ctrl-C or SIGTERM saves the current state; `kdetect train RUN_DIR --resume` continues from
    it (after a kill, from the last complete checkpoint).
    """
    flags = {
        "train.epochs": epochs,
        "data.batch_size": batch_size,
        "model.image_size": image_size and "[{},{}]".format(*image_size),
        "data.root": data and str(data.resolve()),
        "model.type": model_type and model_type.value,
    }
    overrides = list(set_ or []) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    if device is not None:
        _use_device(device)  # before TensorFlow is imported (below)
    from kdetect.engine.training import train as run_training

    if resume and run_dir is None:
        run_dir = recipe
    try:
        run_training(recipe, run_dir=run_dir, resume=resume, overrides=overrides)
    except KeyboardInterrupt:
        raise typer.Abort() from None


def _use_device(device: str) -> None:
    """``--device``: ``cpu`` hides every GPU from TensorFlow; ``0,1`` shows only those."""
    value = device.strip().lower()
    if value != "cpu" and not all(p.strip().isdigit() for p in value.split(",")):
        raise typer.BadParameter(f"expected cpu or GPU ids such as 0,1, got {device!r}",
                                 param_hint="--device")  # fmt: skip
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if value == "cpu" else value.replace(" ", "")
