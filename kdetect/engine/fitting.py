"""One training run, in the order it happens (:class:`Trainer`): read the data, open the run
directory, write the run's files, build and compile the model, check the data, restore or
initialise the weights, assemble the callbacks, call ``model.fit``, save the final detector and
report on it.

:func:`run_training` is what :func:`kdetect.engine.train` calls once the recipe and the run
directory have been checked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import shutil
import signal
import threading
from pathlib import Path

import keras
import numpy as np
from PIL import Image
from rich.markup import escape

from kdetect import __version__
from kdetect.config.builders import build_model
from kdetect.config.loader import absolute_paths, dump
from kdetect.config.schema import Recipe, TrainConfig
from kdetect.data.images import load_image
from kdetect.data.quality import boxes_in_frame
from kdetect.drawing.plots import plot_labels
from kdetect.drawing.visualize import draw_batch
from kdetect.engine import builders, distribute
from kdetect.engine import callbacks as cb
from kdetect.engine.checks import print_data_checks
from kdetect.engine.progress import summary_table
from kdetect.engine.run_report import report_finished_run
from kdetect.engine.training_callbacks import (
    FitData,
    Start,
    TrainingCallbacks,
    make_callbacks,
)
from kdetect.engine.transfer import transfer_weights
from kdetect.ops import tf_ops
from kdetect.plumbing.errors import (
    CheckpointError,
    DiskFullError,
    KdetectError,
    TrainingDiverged,
)
from kdetect.runs import (
    CHECKPOINTS_DIR,
    CLASSES_FILE,
    LABELS_PLOT,
    METRICS_FILE,
    MODEL_FILE,
    RECIPE_FILE,
    SAMPLES_DIR,
    TRAIN_BATCH_PLOT,
    load_model,
    read_classes,
    save_keras,
    write_classes,
)
from kdetect.runs.checkpoints import DISK_FULL_ERRNOS, disk_full_error, latest_epoch_checkpoint
from kdetect.runs.files import read_meta, update_meta
from kdetect.runs.lock import LOCK_FILE


def read_resume_state(run_dir: Path) -> dict:
    """Where to resume the run from: its saved training state (see :func:`callbacks.read_state`),
    or its newest complete ``epoch-NNNN.keras`` when that is further on (a kill between the
    checkpoint and the state) or there is no state; the ``.keras`` holds the optimizer too."""
    state_info = cb.read_state(run_dir / CHECKPOINTS_DIR)
    found = latest_epoch_checkpoint(run_dir / CHECKPOINTS_DIR)
    if found is not None and (state_info is None or found[0] > int(state_info["epoch"])):
        epochs, path = found
        return {"weights": str(path), "epoch": epochs, "step_in_epoch": 0, "best_value": None}
    if state_info is None:
        raise CheckpointError(
            f"{run_dir}: nothing to resume (no saved training state and no complete epoch "
            f"checkpoint); start it again with: kdetect train {run_dir / RECIPE_FILE} "
            f"--run-dir {run_dir}"
        )
    return state_info


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, Kubernetes, batch schedulers) in the main thread: handled as
    Ctrl-C is (the state of the partial epoch saved, status ``interrupted``)."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (elsewhere, e.g.
    the Label Studio backend's training thread, signal handlers cannot be set: left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_training(
    recipe: Recipe,
    run_dir: Path,
    state_info,
    callbacks,
    console,
    resume: bool = False,
    trainer: type[Trainer] | None = None,
) -> Path:
    """What :func:`kdetect.engine.train` calls once the recipe and the run directory are
    checked: ``trainer(...).run()`` (default :class:`Trainer`)."""
    trainer = trainer or Trainer
    if not (isinstance(trainer, type) and issubclass(trainer, Trainer)):
        raise TypeError(f"trainer: expected a subclass of Trainer, got {trainer!r}")
    return trainer(recipe, run_dir, state_info, callbacks, console, resume).run()


class Trainer:
    """One training run of a recipe into ``run_dir``, in the order it happens (:meth:`run`).

    The steps a variant changes are methods of their own: :meth:`build_data`,
    :meth:`build_model`, :meth:`build_callbacks` and :meth:`report` (as detectron2's
    ``DefaultTrainer`` and Ultralytics' trainer name theirs); the rest keeps the run directory
    consistent (its status ends ``finished``, ``interrupted`` or ``failed``, never
    ``running``; a run that fails before its first step leaves no folder).

    Args:
        recipe: the validated recipe.
        run_dir: the run directory (checked and locked by the caller).
        state_info: a resumed run's saved state (:func:`read_resume_state`), else None.
        callbacks: extra Keras callbacks, run after kdetect's own.
        console: the ``rich`` console progress and the report go to.
        resume: continue ``run_dir`` (its ``kdetect.json`` keeps its creation facts).
    """

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        state_info: dict | None = None,
        callbacks=None,
        console=None,
        resume: bool = False,
    ):
        self.recipe, self.run_dir, self.state_info = recipe, Path(run_dir), state_info
        self.extra_callbacks = list(callbacks or [])
        self.console = console
        self.resume = resume
        self.strategy = None  # set by run()
        self.data: builders.Datasets | None = None
        self.started = False  # the first training step has been reached

    # --- The steps a variant may change -----------------------------------------------------
    def build_data(self) -> builders.Datasets:
        """The datasets of the recipe (every image verified), under the strategy."""
        with self.strategy.scope():
            return builders.build_datasets(self.recipe, seed=self.recipe.train.seed)

    def build_model(self, num_classes: int, steps_per_epoch: int | None):
        """The detector and its optimizer, built under the distribution strategy; weight decay
        leaves biases and normalisation parameters alone."""
        with self.strategy.scope():
            model = build_model(self.recipe, num_classes)
            optimizer = builders.build_optimizer(self.recipe.train, steps_per_epoch)
            optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
            model.compile(optimizer=optimizer, jit_compile=self.recipe.train.jit_compile)
            optimizer.build(model.trainable_variables)
        return model

    def build_callbacks(self, samples, fit_data: FitData, start: Start) -> TrainingCallbacks:
        """kdetect's callbacks (progress, checkpoints, evaluation, TensorBoard...), then the
        caller's."""
        run = make_callbacks(
            self.recipe, self.run_dir, self.data, samples, fit_data, start, self.console
        )
        run.callbacks += self.extra_callbacks
        return run

    def report(self, model, detections=None) -> None:
        """The final evaluation, pictures and TensorBoard images
        (:mod:`kdetect.engine.run_report`), by the chief only (other workers train into a
        scratch folder), when there is a validation split and the recipe evaluates at all. The
        final weights are the last epoch's: where that epoch's validation mAP computed the
        ``detections``, they are scored, not predicted again.

        Ctrl-C here leaves the run ``finished`` (``model.keras`` is saved) and says how to
        evaluate it later."""
        recipe, run_dir, console = self.recipe, self.run_dir, self.console
        tcfg = recipe.train
        if not distribute.is_chief(tcfg.distribute):
            return
        if recipe.eval.every > 0 and self.data.val_annotations is not None:
            tensorboard = tcfg.tensorboard and importlib.util.find_spec("tensorboard") is not None
            try:
                cb.lifecycle_hook("final-evaluation")
                report_finished_run(
                    model,
                    self.data.val_annotations,
                    recipe.eval.metric,
                    recipe.data.batch_size,
                    run_dir,
                    console,
                    tcfg.epochs if tensorboard else None,
                    detections=detections,
                )
            except KeyboardInterrupt:
                update_meta(run_dir, status="finished", epochs=tcfg.epochs)
                console.print(
                    "[yellow]final evaluation interrupted[/yellow]; the trained model is saved. "
                    "Evaluate it with:",
                    highlight=False,
                )
                console.print(f"  kdetect evaluate {escape(str(run_dir))}", soft_wrap=True)
                raise

    # --- The run ----------------------------------------------------------------------------
    def run(self) -> Path:
        """Read the data, open the run directory and train; returns the run directory."""
        tcfg, run_dir = self.recipe.train, self.run_dir
        if tcfg.seed is not None:
            keras.utils.set_random_seed(tcfg.seed)
        # Read the data (and verify every image) before the run directory exists: a bad
        # dataset leaves nothing behind.
        self.strategy = builders.build_strategy(tcfg)
        self.data = self.build_data()
        previous_policy = keras.mixed_precision.global_policy().name
        if tcfg.mixed_precision:
            keras.mixed_precision.set_global_policy(tcfg.mixed_precision)
        try:
            with _sigterm_as_interrupt():
                _open_run_dir(self.recipe, run_dir, self.resume)
                try:
                    # A seeded run is exactly reproducible on CPU, and so a resumed run equals
                    # an uninterrupted one (docs/recipes.md, "Interrupting and resuming").
                    with tf_ops.cpu_determinism(tcfg.seed is not None):
                        return self._train()
                except BaseException as exc:
                    if not self.resume and not self.started:
                        _discard_unstarted(run_dir)  # nothing trained: leave no run behind
                    else:
                        _record_end(run_dir, exc)
                    reported = _one_line(exc, run_dir, tcfg)
                    if reported is exc:
                        raise
                    raise reported from exc
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)

    def _train(self) -> Path:
        """The steps of one run, in order."""
        recipe, run_dir, console, data = self.recipe, self.run_dir, self.console, self.data
        tcfg = recipe.train
        samples = self._write_run_files()
        fit_data = FitData(data.train_from, data.val, tcfg.steps_per_epoch or data.train_batches)
        model = self.build_model(len(data.classes), fit_data.steps_per_epoch)
        if data.train_annotations is not None and self.state_info is None:
            print_data_checks(model, data.train_annotations, recipe, console)
        start = self._restore(model)
        if start.epoch >= tcfg.epochs:
            self.started = True
            return self._finish_trained(model, start)
        run = self.build_callbacks(samples, fit_data, start)
        self.started = True
        self._run_epochs(model, fit_data, start, run)

        _save_final(model, run_dir / MODEL_FILE, tcfg.jit_compile)
        summary_table(run.progress.rows, console)
        detections = run.detections_of_epoch(tcfg.epochs - 1, len(data.val_annotations or []))
        self.report(model, detections)
        manager = run.manager
        best = None if manager.best_value is None else [manager.monitor, manager.best_value]
        update_meta(run_dir, status="finished", epochs=tcfg.epochs, best_metric=best)
        console.print(f"run directory: [bold]{escape(str(run_dir))}[/bold]", highlight=False)
        return run_dir

    def _finish_trained(self, model, start: Start) -> Path:
        """A resumed run that has trained every epoch: nothing to do when its final model
        (and, where the recipe evaluates, its metrics) exist; else save and evaluate the final
        model."""
        recipe, run_dir = self.recipe, self.run_dir
        evaluates = recipe.eval.every > 0 and self.data.val_annotations is not None
        done = (run_dir / MODEL_FILE).is_file() and (
            not evaluates or (run_dir / METRICS_FILE).is_file()
        )
        self.console.print(
            f"{escape(str(run_dir))}: already trained for {start.epoch} epochs; "
            + ("nothing left to do" if done else "saving and evaluating its final model"),
            highlight=False,
        )
        if not done:
            _save_final(model, run_dir / MODEL_FILE, recipe.train.jit_compile)
            self.report(model)
        update_meta(run_dir, status="finished", epochs=recipe.train.epochs)
        return run_dir

    def _write_run_files(self) -> list[np.ndarray]:
        """``classes.json`` (a resumed run must keep its classes), ``samples/``, ``labels.png``
        and (for a new run) ``train_batch.jpg``; returns the sample images."""
        recipe, run_dir, data = self.recipe, self.run_dir, self.data
        classes = data.classes
        if (run_dir / CLASSES_FILE).is_file() and self.state_info is not None:
            if read_classes(run_dir / CLASSES_FILE) != classes:
                raise CheckpointError(f"{run_dir}: the data's classes differ from classes.json")
        write_classes(run_dir / CLASSES_FILE, classes)
        samples = _write_samples(run_dir / SAMPLES_DIR, data.val_annotations, recipe.eval.samples)
        if data.train_annotations is not None:
            frame = tuple(recipe.model.image_size)
            boxes, labels = boxes_in_frame(data.train_annotations, frame)
            classes = data.train_annotations.classes
            plot_labels(boxes, labels, classes, frame, run_dir / LABELS_PLOT)
        if self.state_info is None:
            _write_train_batch(data, run_dir / TRAIN_BATCH_PLOT)
        return samples

    def _restore(self, model) -> Start:
        """A resumed run's saved weights and position; else epoch 0, with
        ``train.init_from``'s weights copied in where names and shapes agree."""
        state_info, console, tcfg = self.state_info, self.console, self.recipe.train
        if state_info is not None:
            try:
                model.load_weights(state_info["weights"])
            except (ValueError, OSError) as exc:
                raise CheckpointError(
                    f"{state_info['weights']}: cannot restore state ({exc})"
                ) from None
            start = Start(
                int(state_info["epoch"]),
                int(state_info.get("step_in_epoch", 0)),
                state_info.get("best_value"),
            )
            source = Path(state_info["weights"])
            console.print(
                f"resuming {escape(str(self.run_dir))} at epoch {start.epoch + 1}"
                + (f", step {start.step_in_epoch}" if start.step_in_epoch else "")
                + (f" (from {escape(source.name)})" if source.suffix == ".keras" else ""),
                highlight=False,
            )
            return start
        if tcfg.init_from:
            source, _ = load_model(tcfg.init_from)
            copied, skipped = transfer_weights(source, model)
            del source
            console.print(
                f"initialised {copied} of {copied + len(skipped)} variables from "
                f"{escape(tcfg.init_from)}"
                + (f" ({len(skipped)} re-initialised)" if skipped else ""),
                highlight=False,
            )
        return Start()

    def _run_epochs(self, model, fit_data: FitData, start: Start, run: TrainingCallbacks):
        """``model.fit`` from where the run stands: the rest of an interrupted epoch (unless
        only its validation was left), then whole epochs. Ctrl-C saves the state before it
        propagates.

        Each ``fit`` reads the training stream from the batch the run has reached (``epoch *
        steps_per_epoch + step_in_epoch``), so a resumed run reads the batches an
        uninterrupted one would (see :func:`kdetect.engine.builders.build_datasets`).
        """
        tcfg, run_dir, console = self.recipe.train, self.run_dir, self.console

        def fit(epochs: int, first_epoch: int, steps: int, step_in_epoch: int = 0) -> None:
            model.fit(
                fit_data.train_from(first_epoch * fit_data.steps_per_epoch + step_in_epoch),
                validation_data=fit_data.val,
                epochs=epochs,
                initial_epoch=first_epoch,
                steps_per_epoch=steps,
                validation_steps=tcfg.validation_steps,
                callbacks=run.callbacks,
                shuffle=False,  # the pipeline shuffles
                verbose=0,
            )

        epoch, steps_per_epoch = start.epoch, fit_data.steps_per_epoch
        try:
            if epoch < tcfg.epochs and start.step_in_epoch:
                if start.step_in_epoch < steps_per_epoch:
                    left = steps_per_epoch - start.step_in_epoch
                    fit(epoch + 1, epoch, left, start.step_in_epoch)
                epoch += 1
            if epoch < tcfg.epochs:
                fit(tcfg.epochs, epoch, steps_per_epoch)
        except TrainingDiverged:
            run.progress.close()
            raise
        except KeyboardInterrupt as exc:
            run.progress.close()
            state = run.state
            run.manager.save_state(
                epoch=state.epoch, step_in_epoch=state.step_in_epoch, interrupted=True
            )
            update_meta(run_dir, status="interrupted")
            how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            console.print(
                f"[yellow]{how}[/yellow] at epoch {state.epoch + 1}, step "
                f"{state.step_in_epoch}; state saved. Continue with:",
                highlight=False,
            )
            # The command on a line of its own, never wrapped by us, so that it copies whole.
            console.print(
                f"  kdetect train {escape(str(run_dir))} --resume",
                soft_wrap=True,
                highlight=False,
            )
            raise


def _discard_unstarted(run_dir: Path) -> None:
    """Remove what a new run wrote before its first training step (recipe, samples, ...): the
    folder held nothing before (:func:`check_run_dir` refuses any other), and the run's lock
    removes the folder itself once it is empty."""
    for path in run_dir.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _record_end(run_dir: Path, exc: BaseException) -> None:
    """Status ``interrupted`` (Ctrl-C, SIGTERM) or ``failed`` in ``kdetect.json``; on a full
    disk that write may fail too, and the stale ``running`` left behind reads as interrupted."""
    if read_meta(run_dir).get("status") == "running":
        interrupted = isinstance(exc, KeyboardInterrupt)
        with contextlib.suppress(OSError, KdetectError):
            update_meta(run_dir, status="interrupted" if interrupted else "failed")


def _one_line(exc: BaseException, run_dir: Path, tcfg: TrainConfig) -> BaseException:
    """The error to report for ``exc``: a full disk (checked before a save, or ENOSPC from any
    write) as one line with the resume command, a lost worker as one line, else ``exc``."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        exc = disk_full_error(exc.filename or run_dir, writing=True)
    if isinstance(exc, DiskFullError):
        return DiskFullError(
            f"{exc}; the last complete checkpoint is kept: free space, then continue with: "
            f"kdetect train {run_dir} --resume"
        )
    lost = _worker_lost(exc, tcfg)
    return exc if lost is None else lost


def _open_run_dir(recipe: Recipe, run_dir: Path, resume: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CHECKPOINTS_DIR).mkdir(exist_ok=True)
    dump(absolute_paths(recipe), run_dir / RECIPE_FILE)  # readable from any folder
    if not resume:
        update_meta(
            run_dir,
            name=recipe.name,
            kdetect_version=__version__,
            created=dt.datetime.now().isoformat(timespec="seconds"),
        )
    update_meta(run_dir, status="running")


def _worker_lost(exc: BaseException, tcfg: TrainConfig) -> Exception | None:
    """The one-line error for a multi-worker job that lost a worker (None for anything else)."""
    if not isinstance(exc, Exception) or tcfg.distribute != "multi_worker":
        return None
    if not distribute.is_worker_loss(exc):
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return distribute.WorkerLostError(
        f"multi_worker: lost contact with another worker ({first}); restart every "
        f"worker with --resume to continue from the last checkpoint"
    )


def _write_train_batch(data, path: Path) -> None:
    """The first training batch after augmentation, with its boxes, as the model will see it
    (the stream is stateless and rebuilt, so drawing it changes nothing of training)."""
    batch = next(iter(data.train_from(0).take(1)))
    images = batch["images"].numpy()[:16]
    boxes = batch["bounding_boxes"]["boxes"].numpy()[:16]
    labels = batch["bounding_boxes"]["labels"].numpy()[:16]
    draw_batch(images, boxes, labels, data.classes).save(path, quality=90)


def _write_samples(folder: Path, annotations, count: int) -> list[np.ndarray]:
    """Save the first ``count`` validation images as PNG; return them as arrays."""
    images = []
    if annotations is None or count <= 0:
        return images
    folder.mkdir(parents=True, exist_ok=True)
    for record in annotations.records[:count]:
        image = record.image if record.image is not None else load_image(record.filename)
        image = np.asarray(image, dtype=np.uint8)
        Image.fromarray(image).save(folder / (Path(record.filename).stem + ".png"))
        images.append(image)
    return images


def _save_final(model, path: Path, jit_compile: bool) -> None:
    """Save the trained detector without its training optimizer.

    The optimizer state lives in ``checkpoints/``; ``model.keras`` is the deliverable and must load
    with plain ``keras.saving.load_model`` (no kdetect learning-rate schedule inside).
    """
    model.compile(optimizer=keras.optimizers.SGD(), jit_compile=jit_compile)
    save_keras(model, path)
