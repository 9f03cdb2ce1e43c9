"""Creating a run directory for training: its name, and whether it may be written into."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from kdetect.plumbing.errors import CheckpointError, KdetectError
from kdetect.plumbing.paths import run_around
from kdetect.runs.checkpoints import usable_checkpoint
from kdetect.runs.files import (
    CHECKPOINTS_DIR,
    MODEL_FILE,
    RECIPE_FILE,
    STATE_DIR,
    STATE_FILE,
    read_meta,
)
from kdetect.runs.lock import LOCK_FILE

DEFAULT_RUNS_DIR = "runs"


def safe_run_name(name: str) -> str:
    """``name`` as one folder name: characters other than letters, digits, ``.``, ``-`` and
    ``_`` become ``_``, leading and trailing dots and underscores go (``../../x`` -> ``x``)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "run"


def default_run_dir(recipe, root: str | os.PathLike = DEFAULT_RUNS_DIR) -> Path:
    """``runs/<recipe name>-<YYYYmmdd-HHMMSS>``, always directly inside ``root``
    (``recipe``: anything with a ``name``, a :class:`~kdetect.config.Recipe`)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{safe_run_name(recipe.name)}-{stamp}"


def nothing_to_keep(run_dir: Path) -> bool:
    """A run that failed, was interrupted or was killed (``running`` left behind: the caller
    holds the run's lock, so no live process trains into it) before it saved any state or model:
    rerunning into it loses nothing. Leftovers of saves cut short (temporaries, weights no
    ``state.json`` names) are nothing."""
    checkpoints = run_dir / CHECKPOINTS_DIR
    models = [*checkpoints.glob("*.keras"), run_dir / MODEL_FILE]
    return (
        read_meta(run_dir).get("status") in ("failed", "interrupted", "running")
        and not (checkpoints / STATE_DIR / STATE_FILE).is_file()
        and not any(p.is_file() and usable_checkpoint(p, warn=False) for p in models)
    )


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to resume what is not a run, or to start a run over one that holds results.

    For a new run, call it holding the run's lock (:func:`kdetect.runs.lock.run_lock`).
    """
    if resume:
        if not (run_dir / RECIPE_FILE).is_file():
            raise CheckpointError(f"{run_dir}: not a run directory (no recipe.yaml) to resume")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise KdetectError(f"{run_dir}: exists and is not a folder; choose another --run-dir")
    found = [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.exists() else []
    if found and not nothing_to_keep(run_dir):
        raise KdetectError(
            f"{run_dir}: run directory already exists; use --resume to continue it or choose "
            "another --run-dir"
        )


def check_not_nested(run_dir: Path) -> None:
    """Refuse a new run directory inside another run (its files would be taken for the outer
    run's, and ``kdetect.plumbing.paths`` refuses every other output there); checked before the lock
    creates the folder."""
    outer = run_around(Path(run_dir).parent)
    if outer is not None:
        raise KdetectError(f"{run_dir}: is inside the run {outer}; choose another --run-dir")
