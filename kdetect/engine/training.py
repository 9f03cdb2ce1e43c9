"""``kdetect.engine.train``: resolve the recipe and the run directory, then train
(:mod:`kdetect.engine.fitting` does the run itself)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rich.console import Console

from kdetect.config.loader import apply_overrides, load
from kdetect.config.schema import Recipe
from kdetect.engine import distribute
from kdetect.engine.transfer import transfer_weights
from kdetect.plumbing.errors import CheckpointError
from kdetect.runs import RECIPE_FILE
from kdetect.runs.directory import (
    DEFAULT_RUNS_DIR,
    check_not_nested,
    check_run_dir,
    default_run_dir,
    safe_run_name,
)
from kdetect.runs.lock import run_lock

# Importable from here as before the run-directory helpers moved to kdetect.runs.directory.
__all__ = ["DEFAULT_RUNS_DIR", "default_run_dir", "safe_run_name", "train", "transfer_weights"]


def train(
    recipe: Recipe | str | os.PathLike,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overrides: list[str] | None = None,
    callbacks: list | None = None,
    console=None,
    trainer: type | None = None,
) -> Path:
    """Train the detector a recipe describes; return the run directory.

    Args:
        recipe: a :class:`Recipe`, or a recipe file / run directory to :func:`load`.
        run_dir: where to write the run (default ``runs/<name>-<timestamp>``); with ``resume``
            the run to continue.
        resume: continue ``run_dir`` from its saved state (weights, optimizer, epoch, step).
        overrides: ``--set`` style overrides, when ``recipe`` is a path.
        callbacks: extra Keras callbacks (run after kdetect's own).
        console: a ``rich`` console for progress (default: stderr).
        trainer: a subclass of :class:`kdetect.engine.fitting.Trainer` that changes some of
            its steps (``build_data``, ``build_model``, ``build_callbacks``, ``report``).

    Raises:
        KeyboardInterrupt: after saving the state when training is interrupted (Ctrl-C, or
            SIGTERM in the main thread); ``train(..., resume=True)`` continues it.
        RunLockedError: when another live process trains into ``run_dir``.
        RecipeError, CheckpointError, DataError: for bad recipes, runs or data (DiskFullError:
            not enough space for a checkpoint; the last complete one is kept).
    """
    if console is None:
        console = Console(stderr=True)
        if not console.is_terminal:
            console.width = 160  # logs and CI: do not squeeze the summary table into 80 columns
    if run_dir is not None and not resume and distribute.is_chief():
        # Said at once, before the recipe's model checks import TensorFlow; checked again below
        # holding the run's lock.
        check_not_nested(Path(run_dir))
        check_run_dir(Path(run_dir), resume=False)
    recipe, run_dir = _resolve(recipe, run_dir, resume, overrides)
    if distribute.is_chief(recipe.train.distribute):
        if not resume:
            check_not_nested(run_dir)
        # One process at a time writes a run: a second one stops here with one line, and the
        # checks below see no live writer (a `running` status is a dead process's).
        with run_lock(run_dir):
            check_run_dir(run_dir, resume)
            fitting = _fitting()
            state_info = fitting.read_resume_state(run_dir) if resume else None
            return fitting.run_training(
                recipe, run_dir, state_info, callbacks, console, resume, trainer=trainer
            )
    fitting = _fitting()
    state_info = fitting.read_resume_state(run_dir) if resume else None
    # Only the chief writes the run directory. The other workers of a multi-worker job run the
    # same callbacks (saving may read synchronised variables, a collective) into a scratch
    # folder that is removed afterwards; they resume from the chief's state above.
    scratch = Path(tempfile.mkdtemp(prefix="kdetect-worker-"))
    try:
        fitting.run_training(recipe, scratch, state_info, callbacks, console, trainer=trainer)
        return run_dir
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fitting():
    """:mod:`kdetect.engine.fitting`, imported once the recipe and the run directory are
    checked: it imports TensorFlow (seconds), and those errors are reported at once."""
    from kdetect.engine import fitting

    return fitting


def _resolve(recipe, run_dir, resume: bool, overrides) -> tuple[Recipe, Path]:
    """The recipe to train and its run directory: a resumed run's own ``recipe.yaml``, else the
    given recipe (a file is loaded; ``overrides`` apply either way)."""
    if resume:
        if run_dir is None:
            if isinstance(recipe, (str, os.PathLike)) and Path(recipe).is_dir():
                run_dir = recipe
            else:
                raise CheckpointError("resume: give the run directory to continue")
        run_dir = Path(run_dir)
        check_run_dir(run_dir, resume=True)
        return load(run_dir / RECIPE_FILE, overrides), run_dir
    if not isinstance(recipe, Recipe):
        recipe = load(recipe, overrides)
    elif overrides:
        recipe = load(apply_overrides(recipe.to_dict(), overrides))
    return recipe, Path(run_dir) if run_dir is not None else default_run_dir(recipe)
