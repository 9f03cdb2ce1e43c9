"""Evaluate each checkpoint of a training run as it appears (``kdetect evaluate --watch``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from kdetect.errors import KdetectError
from kdetect.evaluation.api import check_metric, evaluate_model
from kdetect.evaluation.groundtruth import GroundTruth
from kdetect.recipes.runs import CHECKPOINTS_DIR, checkpoint_files, load_keras_file


def _ready_checkpoints(run_dir: Path, settle: float) -> list[Path]:
    """Checkpoint files of the run, oldest first, skipping any written in the last ``settle`` s."""
    candidates = checkpoint_files(run_dir / CHECKPOINTS_DIR, warn=False)
    final = run_dir / "model.keras"
    if final.is_file():
        candidates.append(final)
    now = time.time()
    ready = [p for p in candidates if now - p.stat().st_mtime >= settle]
    return sorted(ready, key=lambda p: (p.name == "model.keras", p.stat().st_mtime))


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
    from kdetect.recipes.builders import run_ground_truth
    from kdetect.recipes.loader import load

    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise KdetectError(f"{run_dir}: not a run directory (no recipe.yaml)")
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
            with open(run_dir / "eval_watch.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(metrics, default=float) + "\n")
            if on_result is not None:
                on_result(path, metrics)
            if path.name == "model.keras":
                return results
        if time.monotonic() - last_new > timeout:
            raise KdetectError(
                f"{run_dir}: no new checkpoint for {timeout:g} s "
                f"({len(results)} evaluated); is training still running? (--timeout)"
            )
        time.sleep(poll_seconds)
