"""Checkpoint files: is a ``.keras`` file complete, which ones a run has, saving and loading them.

A ``.keras`` file is a zip whose directory is written last, so a save cut short (a kill, a full
disk) has none; saves go to a temporary name in the same folder and are renamed into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from pathlib import Path

from kdetect.errors import CheckpointError
from kdetect.paths import atomic_path, is_temporary
from kdetect.pretrained.state_dict import NON_FINITE, first_non_finite
from kdetect.runs.files import BEST_CHECKPOINT, CHECKPOINTS_DIR

logger = logging.getLogger(__name__)


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a ``.keras`` file cannot be a complete model (``None`` when it looks complete).

    Only the zip's directory is read: a save that was cut short has none (it is written last).
    """
    path = Path(path)
    if is_temporary(path):
        return "leftover temporary file of an unfinished save"
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        return f"incomplete or corrupt: not a valid .keras zip ({exc})"
    if "config.json" not in names:
        return "incomplete or corrupt: no config.json inside"
    return None


def usable_checkpoint(path: Path, warn: bool) -> bool:
    """Whether ``path`` looks complete; with ``warn``, a one-line warning when it does not."""
    problem = checkpoint_problem(path)
    if problem is not None and warn:
        logger.warning("warning: %s: skipped (%s)", path, problem)
    return problem is None


def checkpoint_files(folder: str | os.PathLike, warn: bool = True) -> list[Path]:
    """The periodic checkpoints (``epoch-*`` / ``step-*.keras``) in ``folder``, oldest first.

    Leftover temporaries and incomplete files are skipped, each with a one-line warning.
    """
    folder = Path(folder)
    found = [p for p in folder.glob("*-*.keras") if p.is_file() and usable_checkpoint(p, warn)]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete periodic checkpoint of a run, else ``best.keras``."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    periodic = checkpoint_files(folder)
    if periodic:
        return periodic[-1]
    best = folder / BEST_CHECKPOINT
    return best if best.is_file() and usable_checkpoint(best, warn=True) else None


@contextlib.contextmanager
def write_errors(path: str | os.PathLike, what: str):
    """An ``OSError`` while writing ``path`` (a full disk, a lost mount) as one
    :class:`CheckpointError` line; the writer leaves the previous file in place."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CheckpointError(
            f"{path}: could not write the {what} ({reason}); the previous one is kept"
        ) from None


def save_keras(model, path: str | os.PathLike) -> Path:
    """``model.save`` under a temporary name in the same folder, then renamed onto ``path``."""
    with write_errors(path, "model"), atomic_path(path) as tmp:
        model.save(tmp)
    return Path(path)


def load_keras_file(path: str | os.PathLike, shown_as: str | None = None):
    """``keras.saving.load_model`` with kdetect's custom objects registered, one-line errors; a
    model with a NaN or infinite weight is refused (naming the variable). ``shown_as`` names the
    file in errors (a packed run's model is loaded from a temporary copy)."""
    # Deferred: Keras imports TensorFlow, and the CLI reads run directories (checkpoint list,
    # pack) without it.
    import keras

    import kdetect.models.faster_rcnn  # noqa: F401  (registers the model classes)
    import kdetect.recipes.schedules  # noqa: F401  (registers the LR schedule)

    try:
        model = keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{shown_as or path}: cannot load model ({first[:200]})") from None
    bad = first_non_finite((v.path, v.numpy()) for v in model.weights)
    if bad is not None:
        raise CheckpointError(f"{shown_as or path}: variable {bad} {NON_FINITE}")
    return model
