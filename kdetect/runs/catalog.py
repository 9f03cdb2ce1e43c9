"""Run directories and packed runs: find the model, classes and recipe of a trained detector.

A run directory (written by :func:`kdetect.recipes.train`) holds::

    recipe.yaml        the fully resolved recipe
    classes.json       {"classes": [...]}: label id -> name
    model.keras        the final detector (written when training ends)
    checkpoints/       epoch-NNNN.keras (last K), best.keras, state/ (resume)
    history.csv        one row per epoch
    metrics.json       written by `kdetect evaluate`
    logs/              TensorBoard
    samples/           a few validation images (PNG)

A *packed* run (``.kdet``) is a zip of ``model.keras``, ``classes.json``, ``recipe.yaml``,
``metrics.json`` (when present) and ``kdetect.json`` (metadata); ``predict``, ``evaluate`` and
``serve`` accept it wherever they accept a run directory.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdetect.errors import CheckpointError
from kdetect.paths import atomic_path, check_kind, check_not_input, is_temporary, write_text

PACK_SUFFIX = ".kdet"
PACK_META = "kdetect.json"
MODEL_FILE = "model.keras"
CLASSES_FILE = "classes.json"
RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
RESULTS_PLOT = "results.png"
LABELS_PLOT = "labels.png"
PLOTS_DIR = "plots"  # kdetect evaluate's pictures
#: ``predict`` / ``serve``'s score threshold when the run has no best-F1 one (metrics.json).
DEFAULT_MIN_SCORE = 0.5
CHECKPOINTS_DIR = "checkpoints"

# What a packed run may expand to (checked from the zip's declared sizes before anything is
# read, and again byte by byte while extracting, since declared sizes can lie): at most
# MAX_PACK_BYTES in all, at most MAX_PACK_RATIO times its compressed size for a member of more
# than RATIO_FREE_BYTES, and MAX_META_BYTES for the small files read into memory.
MAX_PACK_BYTES = 8 * 2**30
MAX_PACK_RATIO = 100
RATIO_FREE_BYTES = 2**20
MAX_META_BYTES = 64 * 2**20

logger = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """What is known about a run directory, a ``.keras`` file or a packed run."""

    path: Path
    kind: str  # "run", "keras" or "packed"
    model_path: Path | None
    classes: list[str] | None
    recipe: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(PACK_SUFFIX)

    @property
    def epochs(self) -> int:
        """Epochs completed (from history.csv or the pack's metadata)."""
        if self.history:
            return len(self.history)
        return int(self.meta.get("epochs", 0))

    @property
    def created(self) -> dt.datetime:
        stamp = self.meta.get("created")
        if stamp:
            return dt.datetime.fromisoformat(stamp)
        return dt.datetime.fromtimestamp(self.path.stat().st_mtime)


def write_classes(path: str | os.PathLike, classes: list[str]) -> None:
    write_text(path, json.dumps({"classes": list(classes)}, indent=2) + "\n")


def read_classes(path: str | os.PathLike) -> list[str]:
    """Read ``classes.json`` (``{"classes": [...]}`` or a bare list)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read class list ({exc})") from None
    names = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f'{path}: expected {{"classes": [names...]}}')
    return names


def _read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def _read_recipe(path: Path) -> dict[str, Any] | None:
    import yaml

    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


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


def _usable(path: Path, warn: bool) -> bool:
    problem = checkpoint_problem(path)
    if problem is not None and warn:
        logger.warning("warning: %s: skipped (%s)", path, problem)
    return problem is None


def checkpoint_files(folder: str | os.PathLike, warn: bool = True) -> list[Path]:
    """The periodic checkpoints (``epoch-*`` / ``step-*.keras``) in ``folder``, oldest first.

    Leftover temporaries and incomplete files are skipped, each with a one-line warning.
    """
    folder = Path(folder)
    found = [p for p in folder.glob("*-*.keras") if p.is_file() and _usable(p, warn)]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete periodic checkpoint of a run, else ``best.keras``."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    periodic = checkpoint_files(folder)
    if periodic:
        return periodic[-1]
    best = folder / "best.keras"
    return best if best.is_file() and _usable(best, warn=True) else None


def best_min_score(info: RunInfo | None) -> tuple[float, str]:
    """The score threshold to use for a run, and where it comes from: the best-F1 threshold of
    its ``metrics.json`` (written by ``kdetect evaluate``), else :data:`DEFAULT_MIN_SCORE`."""
    threshold = ((info.metrics or {}).get("f1") or {}).get("threshold") if info else None
    if isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0:
        return float(threshold), f"best F1 on {info.path.name}'s evaluation (metrics.json)"
    return DEFAULT_MIN_SCORE, "default"


def inspect_run(path: str | os.PathLike) -> RunInfo:
    """Describe a run directory, ``.keras`` file or packed ``.kdet`` file without loading Keras.

    Raises:
        CheckpointError: when the path does not exist or holds no model.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or model file")
    if path.is_dir():
        model = path / MODEL_FILE
        if not (model.is_file() and _usable(model, warn=True)):
            model = latest_checkpoint(path)
        classes_file = path / CLASSES_FILE
        return RunInfo(
            path=path,
            kind="run",
            model_path=model,
            classes=read_classes(classes_file) if classes_file.is_file() else None,
            recipe=_read_recipe(path / RECIPE_FILE),
            metrics=_read_json(path / METRICS_FILE),
            history=_read_history(path / HISTORY_FILE),
            meta=_read_json(path / PACK_META) or {},
        )
    if path.suffix == PACK_SUFFIX or (path.suffix != ".keras" and _is_pack(path)):
        return _inspect_pack(path)
    if path.suffix == ".keras":
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CheckpointError(f"{path}: cannot load model ({problem})")
        classes = None
        for folder in (path.parent, path.parent.parent):
            if (folder / CLASSES_FILE).is_file():
                classes = read_classes(folder / CLASSES_FILE)
                break
        return RunInfo(path=path, kind="keras", model_path=path, classes=classes)
    raise CheckpointError(f"{path}: not a run directory, .keras or {PACK_SUFFIX} file")


def _is_pack(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return PACK_META in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def check_pack_sizes(zf: zipfile.ZipFile, path: Path) -> None:
    """Refuse a packed run whose declared sizes pass the limits above (a zip bomb)."""
    total = 0
    for info in zf.infolist():
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FREE_BYTES and ratio > MAX_PACK_RATIO:
            raise CheckpointError(
                f"{path}: {info.filename} would expand {ratio:.0f} times "
                f"(limit {MAX_PACK_RATIO}); refusing a possible zip bomb"
            )
    if total > MAX_PACK_BYTES:
        raise CheckpointError(
            f"{path}: would expand to {total / 2**20:.1f} MiB, over the limit of "
            f"{MAX_PACK_BYTES / 2**20:g} MiB"
        )


def _copy_member(zf: zipfile.ZipFile, name: str, dst, limit: int, path: Path) -> int:
    """Stream one member into ``dst``; at most its declared size and ``limit`` bytes."""
    info = zf.getinfo(name)
    limit = min(limit, info.file_size)
    written = 0
    with zf.open(info) as src:
        while chunk := src.read(2**20):
            written += len(chunk)
            if written > limit:
                raise CheckpointError(
                    f"{path}: {name} expands past its declared size or the limit "
                    f"({limit} bytes); refusing a possible zip bomb"
                )
            dst.write(chunk)
    return written


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    import io

    buffer = io.BytesIO()
    _copy_member(zf, name, buffer, MAX_META_BYTES, path)
    return buffer.getvalue()


def _inspect_pack(path: Path) -> RunInfo:
    import yaml

    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if PACK_META not in names or MODEL_FILE not in names:
                raise CheckpointError(f"{path}: not a kdetect packed run (no {PACK_META})")
            check_pack_sizes(zf, path)

            def read(name: str) -> bytes | None:
                return _read_member(zf, name, path) if name in names else None

            meta = json.loads(read(PACK_META))
            classes = json.loads(read(CLASSES_FILE) or "null")
            recipe = yaml.safe_load(read(RECIPE_FILE) or b"") or None
            metrics = json.loads(read(METRICS_FILE) or "null")
    except (zipfile.BadZipFile, ValueError, yaml.YAMLError, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt packed run ({exc})") from None
    if isinstance(classes, dict):
        classes = classes.get("classes")
    return RunInfo(
        path=path,
        kind="packed",
        model_path=None,
        classes=classes,
        recipe=recipe,
        metrics=metrics,
        meta=meta,
    )


def model_file(path: str | os.PathLike) -> tuple[Path, RunInfo, tempfile.TemporaryDirectory | None]:
    """The ``.keras`` file behind a run dir, ``.keras`` or packed run.

    For a packed run the model is extracted to a temporary folder that lives as long as the
    returned ``TemporaryDirectory`` object.
    """
    info = inspect_run(path)
    if info.kind == "packed":
        tmp = tempfile.TemporaryDirectory(prefix="kdetect-")
        target = Path(tmp.name) / MODEL_FILE
        try:
            with zipfile.ZipFile(info.path) as zf, target.open("wb") as dst:
                _copy_member(zf, MODEL_FILE, dst, MAX_PACK_BYTES, info.path)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            tmp.cleanup()
            raise CheckpointError(f"{info.path}: corrupt packed run ({exc})") from None
        except BaseException:
            tmp.cleanup()
            raise
        return target, info, tmp
    if info.model_path is None or not Path(info.model_path).is_file():
        raise CheckpointError(
            f"{info.path}: no model.keras or checkpoint in this run (did training save one?)"
        )
    return Path(info.model_path), info, None


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


def load_keras_file(path: str | os.PathLike):
    """``keras.saving.load_model`` with kdetect's custom objects registered, one-line errors."""
    import keras

    import kdetect.models.faster_rcnn  # noqa: F401  (registers the model classes)
    import kdetect.recipes.schedules  # noqa: F401  (registers the LR schedule)

    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load model ({first[:200]})") from None


def load_model(path: str | os.PathLike):
    """Load the detector of a run directory, ``.keras`` file or packed run.

    Returns:
        ``(model, classes)``; ``classes`` is ``None`` when the run has no ``classes.json``.
    """
    file, info, tmp = model_file(path)
    try:
        model = load_keras_file(file)
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


def best_metric(info: RunInfo) -> tuple[str, float] | None:
    """The headline number of a run: evaluated mAP/AP, else the best val_map or val_loss."""
    if info.metrics:
        for key in ("mAP", "AP"):
            if info.metrics.get(key) is not None:
                return f"{info.metrics.get('metric', key)} {key}", float(info.metrics[key])
    if info.meta.get("best_metric"):
        name, value = info.meta["best_metric"]
        return name, float(value)
    for key, pick in (("val_map", max), ("val_loss", min)):
        values = [float(row[key]) for row in info.history if row.get(key) not in (None, "")]
        if values:
            return key, pick(values)
    return None


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
    check_not_input(output, members)
    check_kind(output, "file")
    best = best_metric(info)
    from kdetect import __version__

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
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
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
    budget = MAX_PACK_BYTES
    try:
        with zipfile.ZipFile(info.path) as zf, atomic_path(dest) as tmp:
            tmp.mkdir()
            for name in zf.namelist():
                if name != Path(name).name:  # flat archive: refuse paths with folders
                    raise CheckpointError(f"{info.path}: unexpected entry {name!r}")
                with (tmp / name).open("wb") as dst:
                    budget -= _copy_member(zf, name, dst, budget, info.path)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{info.path}: corrupt packed run ({exc})") from None
    return dest
