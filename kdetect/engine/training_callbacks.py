"""The pieces of one training run that ``fitting`` passes between its steps, and the callbacks
it gives ``model.fit``, assembled in the order they must run."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from kdetect.config.schema import Recipe, TrainConfig
from kdetect.engine import callbacks as cb
from kdetect.engine.progress import RichProgress
from kdetect.evaluation.callback import EvaluationCallback
from kdetect.runs import CHECKPOINTS_DIR, HISTORY_FILE, LOGS_DIR, VAL_MAP_KEY

#: ``train.checkpoint.best`` -> the log value ``best.keras`` is chosen by.
MONITORS = {"val_loss": "val_loss", "loss": "loss", "map": VAL_MAP_KEY, "none": None}


@dataclass
class FitData:
    """What ``fit`` reads: the training stream from a given batch, the validation data, and
    the steps of one epoch (``train.steps_per_epoch``, else one pass over the training set)."""

    train_from: Callable[[int], Any]
    val: Any
    steps_per_epoch: int


@dataclass
class Start:
    """Where training starts: epoch, step inside it (a resumed interrupted epoch), best value."""

    epoch: int = 0
    step_in_epoch: int = 0
    best_value: float | None = None


@dataclass
class TrainingCallbacks:
    state: cb.TrainingState
    manager: cb.CheckpointManager
    progress: RichProgress
    callbacks: list = field(default_factory=list)
    evaluation: EvaluationCallback | None = None

    def detections_of_epoch(self, epoch: int, num_val: int) -> list | None:
        """The validation detections of ``epoch`` (0-based) over all ``num_val`` images, when
        the validation mAP of that epoch computed them; else None."""
        found = self.evaluation.last_detections if self.evaluation else None
        if found is None or found[0] != epoch or len(found[1]) != num_val:
            return None
        return found[1]


def make_callbacks(
    recipe: Recipe, run_dir: Path, data, samples, fit_data: FitData, start: Start, console
) -> TrainingCallbacks:
    """kdetect's callbacks in the order they must run: those that add to the epoch logs
    (position, learning rate, validation mAP) before those that record them."""
    tcfg = recipe.train
    state = cb.TrainingState(start.epoch, start.step_in_epoch)
    monitor = MONITORS[tcfg.checkpoint.best]
    if monitor == "val_loss" and fit_data.val is None:
        monitor = "loss"
    manager = cb.CheckpointManager(
        run_dir / CHECKPOINTS_DIR,
        state,
        every_epochs=tcfg.checkpoint.every_epochs,
        every_steps=tcfg.checkpoint.every_steps,
        keep=tcfg.checkpoint.keep,
        monitor=monitor,
        best_value=start.best_value,
    )
    progress = RichProgress(
        tcfg.epochs, fit_data.steps_per_epoch, recipe.data.batch_size, console=console, state=state
    )
    callbacks: list = [state, cb.LearningRateLogger()]
    evaluation = None
    if recipe.eval.every > 0 and data.val_annotations is not None:
        evaluation = EvaluationCallback(
            data.val_annotations,
            recipe.eval.metric,
            recipe.eval.every,
            recipe.data.batch_size,
            log_name=VAL_MAP_KEY,
            max_images=recipe.eval.max_images,
            last_epoch=False,  # eval.every is exact: a run ending between evaluations skips it
        )
        callbacks.append(evaluation)
    callbacks += tensorboard_callbacks(tcfg, run_dir / LOGS_DIR, samples, data.classes, console)
    callbacks += [cb.StopOnNonFiniteLoss(state, run_dir), manager]
    callbacks += [cb.HistoryWriter(run_dir / HISTORY_FILE), progress]
    return TrainingCallbacks(state, manager, progress, callbacks, evaluation)


def tensorboard_callbacks(tcfg: TrainConfig, logs: Path, samples, classes, console) -> list:
    """TensorBoard logs and sample predictions, when asked for and the package is there
    (``tf.summary`` writes nothing without tensorboard, which TF does not depend on)."""
    logs.mkdir(exist_ok=True)
    if not tcfg.tensorboard:
        return []
    if importlib.util.find_spec("tensorboard") is None:
        console.print(
            "[yellow]note:[/yellow] the tensorboard package is not installed; no TensorBoard "
            "logs (pip install tensorboard, or set train.tensorboard=false)",
            highlight=False,
        )
        return []
    found = [keras.callbacks.TensorBoard(str(logs), write_graph=False)]
    if samples:
        found.append(cb.ImageSummary(logs / "images", samples[:4], classes))
    return found
