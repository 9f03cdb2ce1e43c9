"""Evaluating a trained run: a saved detector on a split (``kdetect evaluate MODEL``), and each
checkpoint of a run as it appears (``kdetect evaluate --watch``).

This is where a run directory and its recipe become ground truth and a metric name; what scores
a model against them is :mod:`kdetect.evaluation`, which knows nothing of runs or recipes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from kdetect.config.loader import load
from kdetect.engine.builders import run_ground_truth
from kdetect.evaluation.api import check_metric, evaluate_model
from kdetect.evaluation.groundtruth import GroundTruth, load_ground_truth
from kdetect.plumbing.errors import KdetectError
from kdetect.runs import (
    CHECKPOINTS_DIR,
    EVAL_WATCH_FILE,
    MODEL_FILE,
    RECIPE_FILE,
    checkpoint_files,
    load_keras_file,
    load_model,
)
from kdetect.runs.files import read_recipe


def _check_dataset(model_path, data) -> None:
    """A dataset that is not there (``data``, else the run's ``data.root``) is said before the
    model is loaded."""
    if data is not None:
        if not Path(data).exists():
            raise KdetectError(f"{data}: no such file or folder (the dataset to evaluate on)")
        return
    recipe = read_recipe(Path(model_path, RECIPE_FILE)) if Path(model_path).is_dir() else None
    data_section = (recipe or {}).get("data") or {}
    if isinstance(data_section, dict):
        root = data_section.get("root")
        shapes = data_section.get("format", "shapes") == "shapes"
        if not shapes and isinstance(root, str) and root and not Path(root).exists():
            raise KdetectError(
                f"{root}: the run's dataset (data.root) is not there; give --data DATASET_DIR"
            )


def evaluate_saved_model(
    model_path: str | os.PathLike,
    data: str | os.PathLike | None = None,
    format: str | None = None,
    split: str | None = None,
    metric: str | None = None,
    batch_size: int = 1,
    progress: bool = True,
    plots_dir: str | os.PathLike | None = None,
    on_invalid_box: str = "error",
) -> dict:
    """Run a saved detector over a dataset split and score it.

    ``model_path`` is a run directory (``model.keras`` + ``classes.json``), a ``.keras`` file or a
    packed ``.kdet`` run; the ground truth is read with the model's class list so label ids agree.
    With ``data=None`` the run's own recipe says which dataset and split to use (the synthetic
    shapes are generated again from their seed) and ``metric=None`` takes the recipe's
    ``eval.metric``. Otherwise ``metric=None`` means ``coco`` for COCO data and ``voc07`` else.
    """
    _check_dataset(model_path, data)
    model, classes = load_model(model_path)
    if data is None:
        gt = GroundTruth(run_ground_truth(model_path, split))
        if metric is None:
            metric = load(model_path, check_paths=False).eval.metric
    else:
        gt = load_ground_truth(
            data,
            format,
            split or "val",
            classes=classes,
            on_invalid_box=on_invalid_box,
            check_images=True,
        )
    if metric is None:
        metric = "coco" if gt.coco is not None else "voc07"
    check_metric(metric)
    return evaluate_model(model, gt, metric, batch_size, progress, plots_dir)


def _ready_checkpoints(run_dir: Path, settle: float) -> list[Path]:
    """Checkpoint files of the run, oldest first (the final model last), skipping any written in
    the last ``settle`` seconds."""
    candidates = checkpoint_files(run_dir / CHECKPOINTS_DIR, warn=False)
    final = run_dir / MODEL_FILE
    if final.is_file():
        candidates.append(final)
    now = time.time()
    ready = [p for p in candidates if now - p.stat().st_mtime >= settle]
    return sorted(ready, key=lambda p: (p.name == MODEL_FILE, p.stat().st_mtime))


def watch_run(
    run_dir: str | os.PathLike,
    split: str | None = None,
    metric: str | None = None,
    timeout: float = 600.0,
    poll_seconds: float = 5.0,
    batch_size: int = 1,
    on_result: Callable[[Path, dict], None] | None = None,
) -> list[tuple[Path, dict]]:
    """Evaluate every checkpoint a run writes, until its final ``model.keras`` is evaluated.

    Polls ``RUN_DIR/checkpoints/`` every ``poll_seconds``; each new ``epoch-*.keras`` /
    ``step-*.keras`` (and finally ``model.keras``) is loaded and scored on the run's own
    validation split (as ``kdetect evaluate RUN_DIR`` does). Results are appended to
    ``RUN_DIR/eval_watch.jsonl``. Stops when ``model.keras`` has been evaluated, or raises
    ``KdetectError`` when no new checkpoint appears for ``timeout`` seconds, so a stalled or
    crashed training never leaves the watcher hanging silently.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file():
        raise KdetectError(f"{run_dir}: not a run directory (no {RECIPE_FILE})")
    metric = check_metric(metric or load(run_dir, check_paths=False).eval.metric)
    ground_truth = GroundTruth(run_ground_truth(run_dir, split))
    seen: dict[Path, float] = {}
    results: list[tuple[Path, dict]] = []
    last_new = time.monotonic()
    while True:
        for path in _ready_checkpoints(run_dir, settle=min(1.0, poll_seconds)):
            mtime = path.stat().st_mtime
            if seen.get(path) == mtime:
                continue
            seen[path] = mtime
            last_new = time.monotonic()
            model = load_keras_file(path)
            metrics = evaluate_model(model, ground_truth, metric, batch_size, progress=False)
            metrics["checkpoint"] = path.name
            results.append((path, metrics))
            with open(run_dir / EVAL_WATCH_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(metrics, default=float) + "\n")
            if on_result is not None:
                on_result(path, metrics)
            if path.name == MODEL_FILE:
                return results
        if time.monotonic() - last_new > timeout:
            raise KdetectError(
                f"{run_dir}: no new checkpoint for {timeout:g} s "
                f"({len(results)} evaluated); is training still running? (--timeout)"
            )
        time.sleep(poll_seconds)
