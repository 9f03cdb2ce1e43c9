"""Finding the model, classes and recipe of a run directory, ``.keras`` file or packed run;
listing, packing and unpacking runs."""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import zipfile
from pathlib import Path

from kdetect import __version__
from kdetect.plumbing.errors import CheckpointError
from kdetect.plumbing.paths import atomic_path, check_kind, check_not_input
from kdetect.runs import packs
from kdetect.runs.checkpoints import (
    checkpoint_problem,
    ensure_space,
    latest_checkpoint,
    load_keras_file,
    usable_checkpoint,
    write_errors,
)
from kdetect.runs.files import (
    CLASSES_FILE,
    DEFAULT_MIN_SCORE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PACK_META,
    PACK_SUFFIX,
    RECIPE_FILE,
    RunInfo,
    read_classes,
    read_history,
    read_json,
    read_recipe,
)
from kdetect.runs.lock import effective_status
from kdetect.runs.metrics import best_metric


def best_min_score(info: RunInfo | None) -> tuple[float, str]:
    """The score threshold to use for a run, and where it comes from: the best-F1 threshold of
    its ``metrics.json`` (written by ``kdetect train`` and ``kdetect evaluate``) when that F1 is
    above 0, else :data:`DEFAULT_MIN_SCORE`."""
    threshold = f1_threshold(info.metrics if info else None)
    if threshold is None:
        return DEFAULT_MIN_SCORE, "default"
    return threshold, f"best F1 on {info.path.name}'s evaluation (metrics.json)"


def f1_threshold(metrics: dict | None) -> float | None:
    """The best-F1 score threshold of an evaluation's ``metrics``, or None where it says nothing:
    a model that finds nothing right (F1 0 at every threshold) says nothing about the score."""
    best = (metrics or {}).get("f1") or {}
    threshold, f1 = best.get("threshold"), best.get("f1")
    usable = isinstance(f1, (int, float)) and f1 > 0
    if usable and isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0:
        return float(threshold)
    return None


def _inspect_run_dir(path: Path) -> RunInfo:
    model = path / MODEL_FILE
    if not (model.is_file() and usable_checkpoint(model, warn=True)):
        model = latest_checkpoint(path)
    classes_file = path / CLASSES_FILE
    return RunInfo(
        path=path,
        kind="run",
        model_path=model,
        classes=read_classes(classes_file) if classes_file.is_file() else None,
        recipe=read_recipe(path / RECIPE_FILE),
        metrics=read_json(path / METRICS_FILE),
        history=read_history(path / HISTORY_FILE),
        meta=_live_meta(path),
    )


def _live_meta(path: Path) -> dict:
    """``kdetect.json`` with the status as it stands: a ``running`` run whose process died
    (:func:`~kdetect.runs.lock.effective_status`) reads ``interrupted``, with ``"stale": true``."""
    meta = read_json(path / PACK_META) or {}
    status = effective_status(path, meta)
    if status != meta.get("status", ""):
        meta.update(status=status, stale=True)
    return meta


def _inspect_keras_file(path: Path) -> RunInfo:
    """A bare ``.keras`` file; its classes come from a ``classes.json`` beside it or one up
    (a checkpoint inside a run's ``checkpoints/``)."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"{path}: cannot load model ({problem})")
    classes = None
    for folder in (path.parent, path.parent.parent):
        if (folder / CLASSES_FILE).is_file():
            classes = read_classes(folder / CLASSES_FILE)
            break
    return RunInfo(path=path, kind="keras", model_path=path, classes=classes)


def inspect_run(path: str | os.PathLike) -> RunInfo:
    """Describe a run directory, ``.keras`` file or packed ``.kdet`` file without loading Keras.

    Raises:
        CheckpointError: when the path does not exist or holds no model.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or model file")
    if path.is_dir():
        return _inspect_run_dir(path)
    if path.suffix == PACK_SUFFIX or (path.suffix != ".keras" and packs.is_pack(path)):
        return packs.inspect_pack(path)
    if path.suffix == ".keras":
        return _inspect_keras_file(path)
    raise CheckpointError(f"{path}: not a run directory, .keras or {PACK_SUFFIX} file")


def model_file(path: str | os.PathLike) -> tuple[Path, RunInfo, tempfile.TemporaryDirectory | None]:
    """The ``.keras`` file behind a run dir, ``.keras`` or packed run.

    For a packed run the model is extracted to a temporary folder that lives as long as the
    returned ``TemporaryDirectory`` object.
    """
    info = check_model_file(path)
    if info.kind == "packed":
        tmp = tempfile.TemporaryDirectory(prefix="kdetect-")
        target = Path(tmp.name) / MODEL_FILE
        try:
            packs.extract_member(info.path, MODEL_FILE, target)
        except BaseException:
            tmp.cleanup()
            raise
        return target, info, tmp
    return Path(info.model_path), info, None


def check_model_file(path: str | os.PathLike) -> RunInfo:
    """The run behind ``path``, refused when it holds no model (without loading or extracting
    it: a packed run's model is checked when extracted)."""
    info = inspect_run(path)
    if info.kind != "packed" and (info.model_path is None or not Path(info.model_path).is_file()):
        raise CheckpointError(
            f"{info.path}: no model.keras or checkpoint in this run (did training save one?)"
        )
    return info


def load_model(path: str | os.PathLike):
    """Load the detector of a run directory, ``.keras`` file or packed run.

    Returns:
        ``(model, classes)``; ``classes`` is ``None`` when the run has no ``classes.json``.
    """
    file, info, tmp = model_file(path)
    try:
        shown = f"{info.path} ({MODEL_FILE} inside)" if tmp is not None else None
        model = load_keras_file(file, shown)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return model, info.classes


def list_runs(root: str | os.PathLike) -> list[RunInfo]:
    """Every run directory and packed run directly under ``root`` (newest first)."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such directory")
    runs = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and ((child / RECIPE_FILE).is_file() or (child / MODEL_FILE).is_file()):
            runs.append(inspect_run(child))
        elif child.suffix == PACK_SUFFIX:
            try:
                runs.append(inspect_run(child))
            except CheckpointError:
                continue
    return sorted(runs, key=lambda r: r.created, reverse=True)


def pack(run: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Pack a run directory into one portable ``.kdet`` file; returns its path."""
    info = inspect_run(run)
    if info.kind != "run":
        raise CheckpointError(f"{info.path}: only a run directory can be packed")
    if info.model_path is None or not info.model_path.is_file():
        raise CheckpointError(f"{info.path}: nothing to pack (no model.keras or checkpoint)")
    output = Path(output) if output else info.path.with_name(info.path.name + PACK_SUFFIX)
    if output.is_dir():
        output = output / (info.path.name + PACK_SUFFIX)
    members = {info.model_path: MODEL_FILE}
    members.update(
        {info.path / name: name for name in (CLASSES_FILE, RECIPE_FILE, METRICS_FILE, HISTORY_FILE)}
    )
    members = {path: name for path, name in members.items() if path.is_file()}
    check_not_input(output, members, whole=[info.path])  # nor anywhere in the run
    check_kind(output, "file")
    best = best_metric(info)
    meta = {
        "format": 1,
        "kdetect_version": __version__,
        "name": info.path.name,
        "created": info.created.isoformat(timespec="seconds"),
        "packed": dt.datetime.now().isoformat(timespec="seconds"),
        "epochs": info.epochs,
        "model_file": str(info.model_path.relative_to(info.path)),
        "best_metric": list(best) if best else None,
    }
    ensure_space(output, sum(path.stat().st_size for path in members) + (1 << 16))
    with (
        write_errors(output, "packed run"),
        atomic_path(output) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf,
    ):
        zf.writestr(PACK_META, json.dumps(meta, indent=2))
        for path, name in members.items():
            zf.write(path, name)
    return output


def unpack(packed: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Unpack a ``.kdet`` file into a run directory (``dest``, default next to the file)."""
    info = inspect_run(packed)
    if info.kind != "packed":
        raise CheckpointError(f"{info.path}: not a packed run ({PACK_SUFFIX})")
    dest = Path(dest) if dest else info.path.with_name(info.name)
    check_not_input(dest, [info.path], option="DEST")
    check_kind(dest, "folder", "DEST")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CheckpointError(f"{dest}: already exists and is not empty")
    budget = packs.MAX_PACK_BYTES
    try:
        with zipfile.ZipFile(info.path) as zf, atomic_path(dest) as tmp:
            tmp.mkdir()
            for name in zf.namelist():
                if name != Path(name).name:  # flat archive: refuse paths with folders
                    raise CheckpointError(f"{info.path}: unexpected entry {name!r}")
                with (tmp / name).open("wb") as dst:
                    budget -= packs.copy_member(zf, name, dst, budget, info.path)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{info.path}: corrupt packed run ({exc})") from None
    return dest
