"""Evaluating a saved detector (``model.keras`` plus ``classes.json``) on a dataset split."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kdetect.errors import CheckpointError, KdetectError
from kdetect.evaluation.api import check_metric, evaluate_model
from kdetect.evaluation.groundtruth import load_ground_truth


def resolve_model_path(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(model.keras path, classes.json path or None)`` for a run directory or a ``.keras``
    file (``classes.json`` is looked for beside the file)."""
    path = Path(path)
    if path.is_dir():
        model_file = path / "model.keras"
        if not model_file.is_file():
            raise CheckpointError(f"{path}: no model.keras in this run directory")
    elif path.is_file():
        model_file = path
    else:
        raise CheckpointError(f"{path}: model not found (expected a run directory or .keras file)")
    classes_file = model_file.parent / "classes.json"
    return model_file, classes_file if classes_file.is_file() else None


def read_classes_json(path: str | os.PathLike) -> list[str]:
    """Class names from ``classes.json``: a list of names or ``{"classes": [...]}``."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KdetectError(f"{path}: cannot read classes ({exc})") from None
    if isinstance(data, dict):
        data = data.get("classes")
    if not (isinstance(data, list) and data and all(isinstance(c, str) for c in data)):
        raise KdetectError(f"{path}: expected a non-empty list of class names")
    return data


def load_detector(path: str | os.PathLike):
    """Load a saved detector with ``keras.saving.load_model`` (imports TensorFlow).

    Returns ``(model, classes or None)``."""
    model_file, classes_file = resolve_model_path(path)
    import keras

    try:  # register kdetect's layers and model for deserialisation
        import kdetect.models  # noqa: F401
    except ImportError:
        pass
    try:
        model = keras.saving.load_model(model_file)
    except Exception as exc:  # keras raises many types for unreadable/incompatible files
        raise CheckpointError(
            f"{model_file}: cannot load model ({type(exc).__name__}: {exc})"
        ) from None
    classes = read_classes_json(classes_file) if classes_file is not None else None
    return model, classes


def evaluate_saved_model(
    model_path: str | os.PathLike,
    data: str | os.PathLike,
    format: str | None = None,
    split: str = "val",
    metric: str | None = None,
    batch_size: int = 1,
    progress: bool = True,
    plots_dir: str | os.PathLike | None = None,
    on_invalid_box: str = "error",
) -> dict:
    """Run a saved detector over a dataset split and score it.

    ``model_path`` is a run directory (``model.keras`` + ``classes.json``) or a ``.keras`` file;
    the ground truth is read with the model's class list so label ids agree. ``metric=None``
    means ``coco`` for COCO data and ``voc07`` otherwise.
    """
    model, classes = load_detector(model_path)
    gt = load_ground_truth(
        data, format, split, classes=classes, on_invalid_box=on_invalid_box, check_images=True
    )
    if metric is None:
        metric = "coco" if gt.coco is not None else "voc07"
    check_metric(metric)
    return evaluate_model(model, gt, metric, batch_size, progress, plots_dir)
