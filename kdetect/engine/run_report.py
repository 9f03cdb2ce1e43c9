"""What a finished training run leaves beside its model, without extra flags.

The validation split is scored with the final weights, exactly as ``kdetect evaluate RUN``
would (the per-class table printed), reusing the last epoch's validation detections where that
epoch computed them: ``metrics.json`` (with the best-F1 score threshold, which predict
and serve then take as their default ``--min-score``) and the pictures of ``plots/``. Every
picture of the run (``results.png``, ``labels.png`` and ``plots/*.png``) is also written to
TensorBoard, under ``logs/plots``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from kdetect.evaluation.api import evaluate_detections, evaluate_model, headline
from kdetect.evaluation.report import print_metrics, write_metrics
from kdetect.plumbing.errors import KdetectError
from kdetect.runs import (
    DEFAULT_MIN_SCORE,
    LABELS_PLOT,
    LOGS_DIR,
    METRICS_FILE,
    PLOTS_DIR,
    RESULTS_PLOT,
    TRAIN_BATCH_PLOT,
    f1_threshold,
)


def report_finished_run(
    model,
    val_annotations,
    metric: str,
    batch_size: int,
    run_dir: Path,
    console,
    tensorboard_step: int | None,
    detections: list | None = None,
) -> dict | None:
    """Evaluate ``model`` on the validation records, write ``metrics.json`` and ``plots/``, and
    (with ``tensorboard_step``) log the run's pictures to TensorBoard at that step. Given the
    model's ``detections`` on those records (one per record), they are scored instead.

    A failure here is reported as one warning line: the trained model is already saved.
    """
    plots = run_dir / PLOTS_DIR
    try:
        if detections is None:
            metrics = evaluate_model(model, val_annotations, metric, batch_size, False, plots)
        else:
            metrics = evaluate_detections(val_annotations, detections, metric, plots)
        write_metrics(metrics, run_dir / METRICS_FILE)
    except (KdetectError, OSError) as exc:
        console.print(f"[yellow]warning:[/yellow] final evaluation skipped: {exc}", highlight=False)
        return None
    print_metrics(metrics, console)
    console.print(
        f"validation {metric}: {headline(metrics):.4f}; {threshold_note(metrics)}; "
        f"pictures in {run_dir / PLOTS_DIR}",
        highlight=False,
    )
    if tensorboard_step is not None:
        log_pictures(run_pictures(run_dir), run_dir / LOGS_DIR / "plots", tensorboard_step)
    return metrics


def threshold_note(metrics: dict) -> str:
    """The evaluation's best F1 and the score threshold predict and serve will take from it."""
    best = metrics["f1"]
    if f1_threshold(metrics) is None:
        return (
            f"best F1 {best['f1']:.3f}: no detection right yet, so predict and serve use "
            f"{DEFAULT_MIN_SCORE}"
        )
    return (
        f"best F1 {best['f1']:.3f} at score {best['threshold']:.2f} "
        "(the default --min-score of predict and serve)"
    )


def run_pictures(run_dir: Path) -> list[Path]:
    """The pictures a run directory holds: its own, then those of ``plots/``."""
    own = [run_dir / name for name in (RESULTS_PLOT, LABELS_PLOT, TRAIN_BATCH_PLOT)]
    return [p for p in own if p.is_file()] + sorted((run_dir / PLOTS_DIR).glob("*.png"))


def log_pictures(paths: list[Path], log_dir: Path, step: int) -> None:
    """Write each PNG as a TensorBoard image summary named after its file."""
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for path in paths:
            image = tf.io.decode_png(path.read_bytes(), channels=3)
            tf.summary.image(path.stem, np.asarray(image)[None], step=step)
    writer.flush()
    writer.close()
