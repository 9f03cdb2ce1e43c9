"""The files of a run directory: their names, what is known about a run, the small files' readers.

Every module that reads or writes a run directory (training, evaluation of a run, predict,
serve, export, the CLI) spells the file names through the constants here.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdetect.plumbing.errors import CheckpointError
from kdetect.plumbing.parsing import load_yaml
from kdetect.plumbing.paths import CHECKPOINTS_DIR as CHECKPOINTS_DIR
from kdetect.plumbing.paths import CLASSES_FILE as CLASSES_FILE
from kdetect.plumbing.paths import MODEL_FILE as MODEL_FILE
from kdetect.plumbing.paths import PACK_META as PACK_META
from kdetect.plumbing.paths import RECIPE_FILE as RECIPE_FILE
from kdetect.plumbing.paths import write_text

# The names that mark a run directory (kdetect.json, model.keras, classes.json, recipe.yaml,
# checkpoints/) are imported above from kdetect.plumbing.paths, below this layer, which refuses
# every output inside a run; the other names are spelled here.

PACK_SUFFIX = ".kdet"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
RESULTS_PLOT = "results.png"
LABELS_PLOT = "labels.png"
TRAIN_BATCH_PLOT = "train_batch.jpg"
PLOTS_DIR = "plots"  # kdetect evaluate's pictures
SAMPLES_DIR = "samples"
LOGS_DIR = "logs"
EVAL_WATCH_FILE = "eval_watch.jsonl"  # kdetect evaluate --watch's results, one line each
BEST_CHECKPOINT = "best.keras"
STATE_DIR = "state"  # under checkpoints/: the resume state
STATE_FILE = "state.json"  # in STATE_DIR: the manifest of the resume state
#: The validation mAP in the epoch logs and history.csv (EvaluationCallback's default name);
#: older runs call it ``val_map``, which readers still accept.
VAL_MAP_KEY = "val_mAP"
LEGACY_VAL_MAP_KEY = "val_map"
#: ``predict`` / ``serve``'s score threshold when the run has no best-F1 one (metrics.json).
DEFAULT_MIN_SCORE = 0.5


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


def read_history(path: Path) -> list[dict[str, str]]:
    """The rows of ``history.csv`` as strings (none when there is no file)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, ``None`` when it is missing or not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def read_recipe(path: Path) -> dict[str, Any] | None:
    """A run's ``recipe.yaml`` as a plain mapping (``None`` when missing or not a mapping);
    CheckpointError for aliases that expand too far (:func:`kdetect.plumbing.parsing.load_yaml`)."""
    if not path.is_file():
        return None
    try:
        data = load_yaml(path.read_text(), str(path), CheckpointError)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def read_meta(run_dir: Path) -> dict[str, Any]:
    """The run's ``kdetect.json`` (name, version, status, ...); empty when unreadable."""
    try:
        meta = json.loads((run_dir / PACK_META).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def update_meta(run_dir: Path, **values: Any) -> None:
    """Rewrite ``kdetect.json`` with ``values`` merged in."""
    meta = read_meta(run_dir)
    meta.update(values)
    write_text(run_dir / PACK_META, json.dumps(meta, indent=2) + "\n")
