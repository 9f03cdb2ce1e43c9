"""Evaluating a saved detector (a run directory, ``.keras`` file or packed run) on a split."""

from __future__ import annotations

import os

from kdetect.evaluation.api import check_metric, evaluate_model
from kdetect.evaluation.groundtruth import GroundTruth, load_ground_truth


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
    from kdetect.recipes.runs import load_model

    model, classes = load_model(model_path)
    if data is None:
        from kdetect.recipes.builders import run_ground_truth
        from kdetect.recipes.loader import load

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
