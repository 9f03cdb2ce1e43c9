"""``kdetect train``: run a recipe (or resume a run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdetect.cli import app


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
) -> None:
    """Train a detector from a recipe; writes a run directory.

    Ctrl-C or SIGTERM saves the current state; `kdetect train RUN_DIR --resume` continues from
    it (after a kill, from the last complete checkpoint).
    """
    from kdetect.recipes.training import train as run_training

    if resume and run_dir is None:
        run_dir = recipe
    try:
        run_training(recipe, run_dir=run_dir, resume=resume, overrides=list(set_ or []))
    except KeyboardInterrupt:
        raise typer.Abort() from None
