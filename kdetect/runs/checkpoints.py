"""Checkpoint files: is a ``.keras`` file complete, which ones a run has, saving and loading them.

A ``.keras`` file is a zip whose directory is written last, so a save cut short (a kill, a full
disk) has none; saves go to a temporary name in the same folder and are renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

from kdetect.models.registry import register_all  # light: no TensorFlow
from kdetect.plumbing.errors import CheckpointError, DiskFullError
from kdetect.plumbing.paths import atomic_path, is_temporary
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


def latest_epoch_checkpoint(folder: str | os.PathLike) -> tuple[int, Path] | None:
    """The complete ``epoch-NNNN.keras`` with the highest NNNN in ``folder`` (the number of
    epochs it holds) and its path; ``None`` when there is none."""
    found = []
    for path in checkpoint_files(folder, warn=False):
        match = re.fullmatch(r"epoch-(\d+)\.keras", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return max(found) if found else None


#: An OSError with one of these numbers is a full disk (or quota): reported as DiskFullError.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def disk_full_error(
    path: str | os.PathLike, needed: int | None = None, writing: bool = False
) -> DiskFullError:
    """The one line for a disk too full to write ``path``: the bytes needed (when known) and
    the bytes free on its file system (``writing``: the disk filled up during the write, and
    what was written of it is gone)."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = _megabytes(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    need = f"needs about {_megabytes(needed)}, " if needed else ""
    what = "the disk filled up while writing it" if writing else "not enough disk space"
    return DiskFullError(f"{path}: {what} ({need}{free} free)")


def ensure_space(path: str | os.PathLike, needed: int) -> None:
    """Raise :class:`DiskFullError` when ``path``'s file system has fewer than ``needed`` bytes
    free: checked before a save, since h5py can crash natively (not raise) on a full disk."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return  # the folder is not there yet; the write reports what is wrong
    if free < needed:
        raise disk_full_error(path, needed)


def expected_size(model, like: str | os.PathLike | None = None) -> int:
    """The bytes a save of ``model`` is expected to take: the size of ``like`` (an earlier save
    of the same kind) when it exists, else the bytes of the model's and its optimizer's variables
    plus 10% and 1 MiB for the file's own structure."""
    if like is not None and Path(like).is_file():
        return Path(like).stat().st_size
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        variables += list(optimizer.variables)
    size = 0
    for variable in variables:
        count = 1
        for dim in variable.shape:
            count *= int(dim or 1)
        size += count * _itemsize(variable.dtype)
    return int(size * 1.1) + (1 << 20)


def _itemsize(dtype) -> int:
    digits = re.search(r"(\d+)", str(dtype))
    return max(int(digits.group(1)) // 8, 1) if digits else 4


@contextlib.contextmanager
def write_errors(path: str | os.PathLike, what: str):
    """An ``OSError`` while writing ``path`` as one :class:`CheckpointError` line
    (:class:`DiskFullError` for a full disk); the writer leaves the previous file in place."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(path, writing=True) from None
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CheckpointError(
            f"{path}: could not write the {what} ({reason}); the previous one is kept"
        ) from None


def save_keras(model, path: str | os.PathLike, like: str | os.PathLike | None = None) -> Path:
    """``model.save`` under a temporary name in the same folder, then renamed onto ``path``.

    First checks there is room for it (:func:`expected_size`, from ``like`` or ``path`` when
    either exists): :class:`DiskFullError` otherwise, and nothing is written.
    """
    ensure_space(path, expected_size(model, like if like is not None else path))
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

    register_all()  # the model classes and the learning-rate schedule

    try:
        model = keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{shown_as or path}: cannot load model ({first[:200]})") from None
    bad = first_non_finite((v.path, v.numpy()) for v in model.weights)
    if bad is not None:
        raise CheckpointError(f"{shown_as or path}: variable {bad} {NON_FINITE}")
    return model
