"""Creating a run directory for training: its name, and whether it may be written into."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from kdetect.errors import CheckpointError, KdetectError
from kdetect.runs.files import CHECKPOINTS_DIR, MODEL_FILE, RECIPE_FILE, STATE_DIR, read_meta

DEFAULT_RUNS_DIR = "runs"


def safe_run_name(name: str) -> str:
    """``name`` as one folder name: characters other than letters, digits, ``.``, ``-`` and
    ``_`` become ``_``, leading and trailing dots and underscores go (``../../x`` -> ``x``)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "run"


def default_run_dir(recipe, root: str | os.PathLike = DEFAULT_RUNS_DIR) -> Path:
    """``runs/<recipe name>-<YYYYmmdd-HHMMSS>``, always directly inside ``root``
    (``recipe``: anything with a ``name``, a :class:`~kdetect.recipes.Recipe`)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{safe_run_name(recipe.name)}-{stamp}"


def nothing_to_keep(run_dir: Path) -> bool:
    """A run that failed or was interrupted before it saved any state or model: rerunning into
    it loses nothing."""
    checkpoints = run_dir / CHECKPOINTS_DIR
    return (
        read_meta(run_dir).get("status") in ("failed", "interrupted")
        and not any((checkpoints / STATE_DIR).glob("*"))
        and not any(checkpoints.glob("*.keras"))
        and not (run_dir / MODEL_FILE).exists()
    )


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to resume what is not a run, or to start a run over one that holds results."""
    if resume:
        if not (run_dir / RECIPE_FILE).is_file():
            raise CheckpointError(f"{run_dir}: not a run directory (no recipe.yaml) to resume")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise KdetectError(f"{run_dir}: exists and is not a folder; choose another --run-dir")
    if run_dir.exists() and any(run_dir.iterdir()) and not nothing_to_keep(run_dir):
        raise KdetectError(
            f"{run_dir}: run directory already exists; use --resume to continue it or choose "
            "another --run-dir"
        )
