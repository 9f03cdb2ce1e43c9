"""Safe outputs: never write over an input, and replace files and folders atomically.

Every command that writes files goes through these helpers:

- :func:`check_not_input` (or :func:`input_guard`, for many outputs) refuses an output that is one
  of the command's inputs, or inside a folder read as a whole (a run directory, a dataset's
  folders), or inside any run directory (:func:`check_not_in_run`); for a folder that gets
  replaced, also one that holds an input or a run. These come first, with their own messages:
  ``--overwrite`` never replaces an input;
- :func:`check_free` refuses an existing file or non-empty folder unless ``--overwrite``;
- :func:`check_kind` refuses a folder where a file goes, a file where a folder goes, and a path
  below a file (before any work is done; :func:`atomic_path` checks again before it swaps);
- :func:`atomic_path` hands out a temporary sibling to write (a file or a folder) and renames it
  into place once it is complete, so a crash leaves the old content or the new, never half of it;
  :func:`write_text` does this for small text files.

Temporary names start with ``.tmp-`` (:func:`is_temporary`); readers skip what a killed process
left behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kdetect.plumbing.errors import OutputError

TMP_PREFIX = ".tmp-"

#: The files that mark a folder as a run directory. :mod:`kdetect.runs.files` takes these names
#: from here: this module sits below the runs layer, and every output check needs them.
PACK_META = "kdetect.json"
MODEL_FILE = "model.keras"
CLASSES_FILE = "classes.json"
RECIPE_FILE = "recipe.yaml"
CHECKPOINTS_DIR = "checkpoints"


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run directory: it holds ``kdetect.json``, or ``recipe.yaml`` with
    ``model.keras`` or ``checkpoints/``, or ``model.keras`` with ``classes.json``."""
    path = Path(path)
    if (path / PACK_META).is_file():
        return True
    model = (path / MODEL_FILE).is_file()
    if (path / RECIPE_FILE).is_file() and (model or (path / CHECKPOINTS_DIR).is_dir()):
        return True
    return model and (path / CLASSES_FILE).is_file()


def run_around(path: str | os.PathLike) -> Path | None:
    """The run directory that is ``path`` or holds it (through symlinks too), else ``None``."""
    given = Path(os.path.abspath(path))
    for chain in (given, given.resolve()):
        for folder in (chain, *chain.parents):
            if is_run_dir(folder):
                return folder
    return None


def run_within(folder: str | os.PathLike) -> Path | None:
    """A run directory at or below ``folder`` (the first found), else ``None``."""
    for root, dirs, _ in os.walk(folder):
        if is_run_dir(root):
            return Path(root)
        dirs.sort()
    return None


def check_not_in_run(output: str | os.PathLike, option: str = "--output") -> None:
    """Raise :class:`OutputError` when ``output`` is a run directory or inside one.

    A run is written only by training and ``kdetect evaluate`` (its metrics and plots), never
    as another command's output: an export or a prediction file there would replace the run's
    model or be taken for a checkpoint.
    """
    run = run_around(output)
    if run == Path(os.path.abspath(output)):
        raise OutputError(f"{option} {output}: is the run {run}; choose another path")
    if run is not None:
        raise OutputError(f"{option} {output}: is inside the run {run}; choose a path outside it")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def input_guard(
    inputs: Iterable[str | os.PathLike | None],
    option: str = "--output",
    replaces: bool = False,
    whole: Iterable[str | os.PathLike | None] = (),
) -> Callable[[str | os.PathLike], None]:
    """A check to call on each output path: :class:`OutputError` when it is one of ``inputs``,
    inside one of the folders ``whole`` (inputs read as a whole: a run directory, the folders a
    dataset is read from) or inside any run directory (:func:`check_not_in_run`).

    Paths are compared resolved and by inode, so symlinks and hard links count. With
    ``replaces`` (the output is a folder replaced as a whole) an input or a run directory inside
    it is refused too.
    """
    whole = [Path(p) for p in whole if p is not None and Path(p).is_dir()]
    by_path = {Path(p).resolve(): Path(p) for p in [*inputs, *whole] if p is not None}
    by_identity = {_identity(p): p for p in by_path.values()}
    by_identity.pop(None, None)
    folders = {path.resolve(): path for path in whole}

    def check(output: str | os.PathLike) -> None:
        output = Path(output)
        resolved = output.resolve()
        found = by_path.get(resolved) or by_identity.get(_identity(output))
        if found is not None:
            raise OutputError(f"{option} {output}: is the input {found}; choose another path")
        for parent in resolved.parents:
            if parent in folders:
                raise OutputError(
                    f"{option} {output}: is inside the input {folders[parent]}; choose another path"
                )
        check_not_in_run(output, option)
        if replaces:
            for path, given in by_path.items():
                if resolved in path.parents:
                    raise OutputError(
                        f"{option} {output}: holds the input {given}; choose another path"
                    )
            run = run_within(output) if output.is_dir() else None
            if run is not None:
                raise OutputError(f"{option} {output}: holds the run {run}; choose another path")

    return check


def check_not_input(
    output: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None],
    option: str = "--output",
    replaces: bool = False,
    whole: Iterable[str | os.PathLike | None] = (),
) -> None:
    """Raise :class:`OutputError` when ``output`` is one of ``inputs``, inside a folder of
    ``whole`` or inside a run (see :func:`input_guard`)."""
    input_guard(inputs, option, replaces, whole)(output)


def check_free(output: str | os.PathLike, overwrite: bool, option: str = "--output") -> None:
    """Raise :class:`OutputError` for an existing file or non-empty folder, unless ``overwrite``."""
    output = Path(output)
    if overwrite or not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    what = "folder is not empty" if output.is_dir() else "file exists"
    raise OutputError(f"{option} {output}: {what}; use --overwrite to replace it")


def check_kind(output: str | os.PathLike, kind: str | None, option: str = "--output") -> None:
    """Raise :class:`OutputError` unless ``output`` can become a ``kind`` (``file`` / ``folder``;
    ``None``: either).

    Refused: a folder where a file goes (it would be replaced as a whole), a file where a folder
    goes, and a path below an existing file. Missing parent folders are fine (they are created).
    """
    output = Path(output)
    if kind == "file" and output.is_dir():
        raise OutputError(f"{option} {output}: is a folder; give a file path")
    if kind == "folder" and os.path.lexists(output) and not output.is_dir():
        raise OutputError(f"{option} {output}: is a file; give a folder")
    for parent in output.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise OutputError(f"{option} {output}: {parent} is a file, not a folder")
            break


def temp_sibling(path: str | os.PathLike) -> Path:
    """A fresh temporary name next to ``path`` that keeps its full suffix (``.weights.h5``)."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(3)}.{path.name}")


def is_temporary(path: str | os.PathLike) -> bool:
    return Path(path).name.startswith(TMP_PREFIX)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swap(new: Path, target: Path) -> None:
    """Move ``new`` onto ``target``; an earlier ``target`` is removed only once ``new`` is there."""
    if not os.path.lexists(target) or (new.is_file() and target.is_file()):
        os.replace(new, target)  # atomic
        return
    if new.is_dir() != target.is_dir():  # never swap a whole folder for a file, or back
        check_kind(target, "folder" if new.is_dir() else "file", "output")
    old = temp_sibling(target)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    _remove(old)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` when the block succeeds.

    On an exception (or Ctrl-C) the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    check_kind(path, None, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        _swap(tmp, path)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (flushed to disk before it replaces the old one)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)
