"""Keras callbacks used by :func:`kdetect.engine.train`.

Order matters: callbacks that add values to the epoch ``logs`` (learning rate, validation mAP:
:class:`kdetect.evaluation.EvaluationCallback`) come before those that record them (checkpoints,
history.csv, TensorBoard, progress: :mod:`kdetect.engine.progress`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kdetect.drawing.plots import plot_results, read_history
from kdetect.drawing.visualize import draw_detections
from kdetect.models import loss_names
from kdetect.models.outputs import split_detections
from kdetect.plumbing.errors import CheckpointError, TrainingDiverged
from kdetect.plumbing.paths import write_text
from kdetect.runs import (
    BEST_CHECKPOINT,
    CHECKPOINTS_DIR,
    LEGACY_VAL_MAP_KEY,
    RESULTS_PLOT,
    STATE_DIR,
    VAL_MAP_KEY,
    checkpoint_files,
    save_keras,
    write_errors,
)
from kdetect.runs.checkpoints import ensure_space, expected_size
from kdetect.runs.files import STATE_FILE

LEGACY_WEIGHTS = "state.weights.h5"  # runs written before state.json named its weights file


def current_lr(model: keras.Model) -> float:
    """The optimizer's learning rate at its current iteration."""
    optimizer = model.optimizer
    lr = optimizer.learning_rate
    try:
        return float(keras.ops.convert_to_numpy(lr))
    except Exception:  # a schedule object
        schedule = getattr(optimizer, "_learning_rate", lr)
        return float(keras.ops.convert_to_numpy(schedule(optimizer.iterations)))


def lifecycle_hook(point: str) -> None:
    """Test-only hooks at named moments of training, for the run-lifecycle tests
    (``tests/runs/test_run_lifecycle.py``); nothing happens unless their variables are set.

    Points: ``step:N`` (optimizer step N done), ``after-checkpoint:E`` (``epoch-000E.keras``
    written, the resume state not yet), ``after-state:E`` (the resume state of epoch E written),
    ``final-evaluation`` (``model.keras`` saved, the final evaluation about to start).

    - ``KDETECT_TEST_KILL_AT=<point>``: the process SIGKILLs itself there (a kill at that moment).
    - ``KDETECT_TEST_PAUSE_AT=<point>`` with ``KDETECT_TEST_PAUSE_FILE=<path>``: writes
      ``<path>.reached``, then waits until ``<path>`` exists (signals are handled while waiting).
    """
    if os.environ.get("KDETECT_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get("KDETECT_TEST_PAUSE_FILE")
    if pause and os.environ.get("KDETECT_TEST_PAUSE_AT") == point:
        Path(pause + ".reached").write_text(str(os.getpid()))
        while not Path(pause).exists():
            time.sleep(0.05)


class TrainingState(keras.callbacks.Callback):
    """Tracks where training is (epoch, step in epoch, global step) for saving and resuming.

    ``step_in_epoch`` counts the batches of the epoch read so far (from ``initial_step`` in a
    resumed epoch): with the epoch it is the run's position in the training stream. It counts
    the batches, not optimizer steps (a loss-scaling optimizer skips steps), and includes a
    step that ran but was interrupted (Ctrl-C) before its ``on_train_batch_end``.
    ``optimizer.iterations`` is the global step: it is saved with the optimizer state, so a
    resumed run continues the learning-rate schedule exactly.
    """

    def __init__(self, initial_epoch: int = 0, initial_step: int = 0):
        super().__init__()
        self.epoch = initial_epoch
        self.epoch_done = False
        self._steps = initial_step  # batches of the epoch seen to end
        self._first_step = initial_step  # where ``fit`` started the epoch
        self._iterations = None  # the optimizer's step count when the last batch ended

    @property
    def global_step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    @property
    def step_in_epoch(self) -> int:
        if self.epoch_done:
            return 0
        cut_short = self._iterations is not None and self.global_step != self._iterations
        return self._steps + int(cut_short)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        resumed = epoch == self.epoch and not self.epoch_done  # the rest of an interrupted epoch
        self._first_step = self._steps = self._steps if resumed else 0
        self._iterations = self.global_step
        self.epoch = epoch
        self.epoch_done = False

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._steps = self._first_step + batch + 1
        self._iterations = self.global_step

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1
        self.epoch_done = True


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first step whose loss terms are not all finite.

    Raises :class:`~kdetect.plumbing.errors.TrainingDiverged` naming the term, the epoch and step
    and the likely causes. It must come before the checkpoint callbacks in the list, so that the
    diverged weights are never saved: the last good checkpoint stays the newest.
    """

    def __init__(self, state: TrainingState, run_dir: str | Path):
        super().__init__()
        self.state = state
        self.run_dir = Path(run_dir)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        for key in loss_names(logs or {}):
            value = (logs or {}).get(key)
            if value is None:
                continue
            value = float(keras.ops.convert_to_numpy(value))
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"training stopped: {key} is {value} at epoch {self.state.epoch + 1}, step "
                    f"{batch + 1} (optimizer step {self.state.global_step}); the last good "
                    f"checkpoint in {self.run_dir / CHECKPOINTS_DIR} is kept. Likely causes: a "
                    "learning rate too high for this batch size (lower train.optimizer.lr or "
                    "lengthen train.schedule.warmup_steps), or degenerate boxes (kdetect "
                    "dataset inspect)"
                )


class LearningRateLogger(keras.callbacks.Callback):
    """Adds ``lr`` (the rate at the end of the epoch) to the epoch logs."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["lr"] = current_lr(self.model)


class CheckpointManager(keras.callbacks.Callback):
    """Periodic checkpoints (keep the last ``keep``), the best one, and the resume state.

    Files under ``folder``: ``epoch-0003.keras`` / ``step-000500.keras`` (whole model with
    optimizer), ``best.keras`` (by ``monitor``), ``state/`` (the resume state, see
    :meth:`save_state`), rewritten at the end of every epoch and when training is interrupted.
    Every file is written under a temporary name and renamed into place, so a crash never leaves
    a truncated checkpoint.
    """

    def __init__(
        self,
        folder: str | Path,
        state: TrainingState,
        every_epochs: int | None = 1,
        every_steps: int | None = None,
        keep: int = 3,
        monitor: str | None = "val_loss",
        best_value: float | None = None,
    ):
        super().__init__()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.every_epochs = every_epochs
        self.every_steps = every_steps
        self.keep = keep
        self.monitor = monitor
        self.mode = "max" if monitor and monitor.lower().endswith("map") else "min"
        self.best_value = best_value
        self.best_epoch: int | None = None

    # -- periodic --------------------------------------------------------------------------
    def _save_periodic(self, name: str) -> None:
        periodic = checkpoint_files(self.folder, warn=False)
        save_keras(self.model, self.folder / name, like=periodic[-1] if periodic else None)
        periodic = checkpoint_files(self.folder, warn=False)
        for old in periodic[: max(len(periodic) - self.keep, 0)]:
            old.unlink(missing_ok=True)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.every_steps and self.state.global_step % self.every_steps == 0:
            self._save_periodic(f"step-{self.state.global_step:07d}.keras")
        lifecycle_hook(f"step:{self.state.global_step}")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.every_epochs and (epoch + 1) % self.every_epochs == 0:
            self._save_periodic(f"epoch-{epoch + 1:04d}.keras")
            lifecycle_hook(f"after-checkpoint:{epoch + 1}")
        value = logs.get(self.monitor) if self.monitor else None
        if value is not None and math.isfinite(float(value)):
            value = float(value)
            better = self.best_value is None or (
                value > self.best_value if self.mode == "max" else value < self.best_value
            )
            if better:
                self.best_value = value
                self.best_epoch = epoch + 1
                save_keras(self.model, self.folder / BEST_CHECKPOINT)
        self.save_state(epoch=epoch + 1, step_in_epoch=0)
        lifecycle_hook(f"after-state:{epoch + 1}")

    # -- resume state ----------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.folder / STATE_DIR

    def save_state(self, epoch: int, step_in_epoch: int, interrupted: bool = False) -> None:
        """Write model + optimizer variables and the position in training as one atomic unit.

        The variables go to a new ``state-<step>-<token>.weights.h5``; ``state.json`` (the
        manifest naming it) then replaces the old one in a single rename, and only after that
        are older weight files removed. A kill (or a second Ctrl-C) at any point leaves the
        previous state or the new one whole.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        name = f"state-{self.state.global_step:07d}-{secrets.token_hex(3)}.weights.h5"
        previous = sorted(self.state_dir.glob("*.weights.h5"), key=lambda p: p.stat().st_mtime)
        needed = expected_size(self.model, previous[-1] if previous else None)
        ensure_space(self.state_dir / name, needed)
        with write_errors(self.state_dir / name, "training state"):
            try:
                self.model.save_weights(self.state_dir / name)
            except OSError:
                (self.state_dir / name).unlink(missing_ok=True)  # a partial file
                raise
        info = {
            "weights_file": name,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": self.state.global_step,
            "best_value": self.best_value,
            "monitor": self.monitor,
            "interrupted": interrupted,
            "time": time.time(),
        }
        with write_errors(self.state_dir / STATE_FILE, "training state"):
            write_text(self.state_dir / STATE_FILE, json.dumps(info, indent=2))
        for old in self.state_dir.glob("*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)


def read_state(folder: str | Path) -> dict[str, Any] | None:
    """The resume state written by :class:`CheckpointManager` (``None`` when there is none).

    Only what ``state.json`` names is trusted; weights written after it (a save cut short) are
    ignored.
    """
    state_dir = Path(folder) / STATE_DIR
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        weights = state_dir / info.get("weights_file", LEGACY_WEIGHTS)
    except (ValueError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"{path}: corrupt training state ({exc})") from None
    if not weights.is_file():
        raise CheckpointError(f"{path}: names {weights.name}, which is missing")
    info["weights"] = str(weights)
    return info


class HistoryWriter(keras.callbacks.Callback):
    """Appends one row per epoch to ``history.csv`` (rewriting the header when keys appear) and
    redraws ``results.png`` beside it from the whole history."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch + 1}
        row.update({k: scalar(v) for k, v in (logs or {}).items()})
        rows = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [_renamed(r) for r in csv.DictReader(f) if int(r["epoch"]) < epoch + 1]
        rows.append(row)
        keys: list[str] = []
        for r in rows:
            keys.extend(k for k in r if k not in keys)
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, text.getvalue())
        plot_results(read_history(self.path), self.path.with_name(RESULTS_PLOT))


def _renamed(row: dict) -> dict:
    """A history row of a run written before the validation mAP was named ``val_mAP``, with
    its ``val_map`` column under the new name (a resumed run keeps one column)."""
    return {(VAL_MAP_KEY if key == LEGACY_VAL_MAP_KEY else key): v for key, v in row.items()}


def scalar(value: Any) -> Any:
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return value


class ImageSummary(keras.callbacks.Callback):
    """Draws predictions on a few validation images into TensorBoard every epoch."""

    def __init__(
        self,
        log_dir: str | Path,
        images: list[np.ndarray],
        classes: list[str],
        min_score: float = 0.3,
    ):
        super().__init__()
        self.log_dir = str(log_dir)
        self.images = images
        self.classes = classes
        self.min_score = min_score
        self._writer = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.images:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        drawn = []
        for image in self.images:
            (found,) = split_detections(self.model.predict_on_batch(image[None]))
            keep = found.confidence >= self.min_score
            boxes, labels, scores = found.boxes[keep], found.labels[keep], found.confidence[keep]
            drawn.append(np.asarray(draw_detections(image, boxes, labels, scores, self.classes)))
        with self._writer.as_default():
            tf.summary.image("predictions", np.stack(drawn), step=epoch + 1, max_outputs=len(drawn))
        self._writer.flush()
