"""``kdetect.recipes.train``: build everything a recipe describes and call ``model.fit``."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from kdetect import distribute
from kdetect.errors import CheckpointError, KdetectError, RecipeError, TrainingDiverged
from kdetect.paths import write_text
from kdetect.recipes import runs
from kdetect.recipes.loader import dump, load
from kdetect.recipes.run_report import report_finished_run
from kdetect.recipes.schema import Recipe

DEFAULT_RUNS_DIR = "runs"


def safe_run_name(name: str) -> str:
    """``name`` as one folder name: characters other than letters, digits, ``.``, ``-`` and
    ``_`` become ``_``, leading and trailing dots and underscores go (``../../x`` -> ``x``)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "run"


def default_run_dir(recipe: Recipe, root: str | os.PathLike = DEFAULT_RUNS_DIR) -> Path:
    """``runs/<recipe name>-<YYYYmmdd-HHMMSS>``, always directly inside ``root``."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{safe_run_name(recipe.name)}-{stamp}"


def transfer_weights(source, target) -> tuple[int, list[str]]:
    """Copy the variables of ``source`` into ``target`` where names and shapes agree.

    Variables are matched by their path without the model's own name (``rpn_head/conv/kernel``);
    when the two models name their layers differently (auto-numbered names), they are matched
    by position instead, which is stable for the same architecture. Variables whose shapes
    differ (the class-dependent box predictor when the class count changes) keep their fresh
    initialisation.

    Returns:
        ``(number of variables copied, paths of target variables left as initialised)``.
    """

    def keys(model) -> dict[str, Any]:
        prefix = f"{model.name}/"
        return {v.path.removeprefix(prefix): v for v in model.weights}

    src_vars, dst_vars = list(source.weights), list(target.weights)
    by_path, dst_paths = keys(source), keys(target)
    matched_by_path = sum(path in by_path for path in dst_paths)
    if matched_by_path < 0.5 * len(dst_vars) and len(src_vars) == len(dst_vars):
        pairs = list(zip(src_vars, dst_vars, strict=True))
    else:
        pairs = [(by_path.get(path), v) for path, v in dst_paths.items()]
    copied, skipped = 0, []
    for src, dst in pairs:
        if src is None or tuple(src.shape) != tuple(dst.shape):
            skipped.append(dst.path)
            continue
        dst.assign(src.value)
        copied += 1
    return copied, skipped


def _steps(dataset, requested: int | None) -> int | None:
    """Steps of one epoch: the recipe's value, else the dataset's cardinality when known."""
    if requested is not None:
        return requested
    import tensorflow as tf

    cardinality = int(dataset.cardinality())
    if cardinality in (tf.data.INFINITE_CARDINALITY, tf.data.UNKNOWN_CARDINALITY):
        return None
    if cardinality == 0:
        raise RecipeError("data.batch_size: larger than the training set (no full batch)")
    return cardinality


def _write_samples(folder: Path, annotations, count: int) -> list[np.ndarray]:
    """Save the first ``count`` validation images as PNG; return them as arrays."""
    from PIL import Image

    from kdetect.data.images import load_image

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


def _read_meta(run_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((run_dir / runs.PACK_META).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _nothing_to_keep(run_dir: Path) -> bool:
    """A run that failed or was interrupted before it saved any state or model: rerunning into
    it loses nothing."""
    checkpoints = run_dir / runs.CHECKPOINTS_DIR
    return (
        _read_meta(run_dir).get("status") in ("failed", "interrupted")
        and not any((checkpoints / "state").glob("*"))
        and not any(checkpoints.glob("*.keras"))
        and not (run_dir / runs.MODEL_FILE).exists()
    )


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / runs.RECIPE_FILE).is_file():
            raise CheckpointError(f"{run_dir}: not a run directory (no recipe.yaml) to resume")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise KdetectError(f"{run_dir}: exists and is not a folder; choose another --run-dir")
    if run_dir.exists() and any(run_dir.iterdir()) and not _nothing_to_keep(run_dir):
        raise KdetectError(
            f"{run_dir}: run directory already exists; use --resume to continue it or choose "
            "another --run-dir"
        )


def _summary_table(rows: list[dict[str, Any]], console) -> None:
    from rich.table import Table

    if not rows:
        return
    columns = [
        ("epoch", "epoch", "{:d}"),
        ("loss", "loss", "{:.4f}"),
        ("rpn_cls_loss", "rpn cls", "{:.4f}"),
        ("rpn_box_loss", "rpn box", "{:.4f}"),
        ("rcnn_cls_loss", "rcnn cls", "{:.4f}"),
        ("rcnn_box_loss", "rcnn box", "{:.4f}"),
        ("val_loss", "val loss", "{:.4f}"),
        ("val_map", "val mAP", "{:.4f}"),
        ("lr", "lr", "{:.2e}"),
        ("images_per_s", "img/s", "{:.1f}"),
        ("time", "time (s)", "{:.1f}"),
    ]
    present = [c for c in columns if any(c[0] in r for r in rows)]
    table = Table(title="training summary")
    for _, title, _ in present:
        table.add_column(title, justify="right")
    for row in rows:
        cells = []
        for key, _, fmt in present:
            value = row.get(key)
            cells.append(
                "" if value is None else fmt.format(int(value) if key == "epoch" else float(value))
            )
        table.add_row(*cells)
    console.print(table)


def _update_meta(run_dir: Path, **values: Any) -> None:
    meta = _read_meta(run_dir)
    meta.update(values)
    write_text(run_dir / runs.PACK_META, json.dumps(meta, indent=2) + "\n")


def train(
    recipe: Recipe | str | os.PathLike,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overrides: list[str] | None = None,
    callbacks: list | None = None,
    console=None,
) -> Path:
    """Train the detector a recipe describes; return the run directory.

    Args:
        recipe: a :class:`Recipe`, or a recipe file / run directory to :func:`load`.
        run_dir: where to write the run (default ``runs/<name>-<timestamp>``); with ``resume``
            the run to continue.
        resume: continue ``run_dir`` from its saved state (weights, optimizer, epoch, step).
        overrides: ``--set`` style overrides, when ``recipe`` is a path.
        callbacks: extra Keras callbacks (run after kdetect's own).
        console: a ``rich`` console for progress (default: stderr).

    Raises:
        KeyboardInterrupt: after saving the state when training is interrupted (Ctrl-C);
            ``train(..., resume=True)`` continues it.
        RecipeError, CheckpointError, DataError: for bad recipes, runs or data.
    """
    from rich.console import Console

    if console is None:
        console = Console(stderr=True)
        if not console.is_terminal:
            console.width = 160  # logs and CI: do not squeeze the summary table into 80 columns
    if resume:
        if run_dir is None:
            if isinstance(recipe, (str, os.PathLike)) and Path(recipe).is_dir():
                run_dir = recipe
            else:
                raise CheckpointError("resume: give the run directory to continue")
        run_dir = Path(run_dir)
        _check_run_dir(run_dir, resume=True)
        recipe = load(run_dir / runs.RECIPE_FILE, overrides)
    elif not isinstance(recipe, Recipe):
        recipe = load(recipe, overrides)
    elif overrides:
        from kdetect.recipes.loader import apply_overrides

        recipe = load(apply_overrides(recipe.to_dict(), overrides))
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    from kdetect import distribute

    chief = distribute.is_chief(recipe.train.distribute)
    if chief:
        _check_run_dir(run_dir, resume)

    # Only now pay for importing TensorFlow: recipe errors above stay fast.
    import keras

    from kdetect.recipes import builders
    from kdetect.recipes import callbacks as cb

    state_info = None
    if resume:
        state_info = cb.read_state(run_dir / runs.CHECKPOINTS_DIR)
        if state_info is None:
            raise CheckpointError(f"{run_dir}: no saved training state in checkpoints/state")
    if not chief:
        # Only the chief writes the run directory. The other workers of a multi-worker job
        # run the same callbacks (saving may read synchronised variables, a collective) into a
        # scratch folder that is removed afterwards; they resume from the chief's state above.
        import shutil
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="kdetect-worker-"))
        try:
            _train_in(recipe, scratch, state_info, callbacks, console, keras, builders, cb)
            return run_dir
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return _train_in(recipe, run_dir, state_info, callbacks, console, keras, builders, cb, resume)


def _train_in(
    recipe, run_dir, state_info, callbacks, console, keras, builders, cb, resume=False
) -> Path:
    tcfg = recipe.train
    if tcfg.seed is not None:
        keras.utils.set_random_seed(tcfg.seed)
    # Read the data (and verify every image) before the run directory exists: a bad dataset
    # leaves nothing behind.
    strategy = builders.build_strategy(tcfg)
    with strategy.scope():
        data = builders.build_datasets(recipe, seed=tcfg.seed)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / runs.CHECKPOINTS_DIR).mkdir(exist_ok=True)
    dump(recipe, run_dir / runs.RECIPE_FILE)
    from kdetect import __version__

    if not resume:
        _update_meta(
            run_dir,
            name=recipe.name,
            kdetect_version=__version__,
            created=dt.datetime.now().isoformat(timespec="seconds"),
        )
    _update_meta(run_dir, status="running")

    previous_policy = keras.mixed_precision.global_policy().name
    if tcfg.mixed_precision:
        keras.mixed_precision.set_global_policy(tcfg.mixed_precision)
    try:
        return _fit(
            recipe, run_dir, state_info, callbacks or [], console, builders, cb, strategy, data
        )
    except BaseException as exc:
        # Never leave the run marked `running`: interrupted (state saved, or nothing to keep)
        # or failed.
        if _read_meta(run_dir).get("status") == "running":
            interrupted = isinstance(exc, KeyboardInterrupt)
            _update_meta(run_dir, status="interrupted" if interrupted else "failed")
        from kdetect import distribute

        if (
            isinstance(exc, Exception)
            and tcfg.distribute == "multi_worker"
            and distribute.is_worker_loss(exc)
        ):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise distribute.WorkerLostError(
                f"multi_worker: lost contact with another worker ({first}); restart every "
                f"worker with --resume to continue from the last checkpoint"
            ) from exc
        raise
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _plot_labels(annotations, frame: tuple[int, int], run_dir: Path) -> Path:
    """``labels.png`` of the training boxes in the network frame."""
    from kdetect.data.quality import boxes_in_frame
    from kdetect.plots import plot_labels

    boxes, labels = boxes_in_frame(annotations, frame)
    return plot_labels(boxes, labels, annotations.classes, frame, run_dir / runs.LABELS_PLOT)


def _check_data(annotations, frame: tuple[int, int], console) -> None:
    """One warning line per problem of kdetect.data.quality (identical images are looked for in
    datasets of up to 5000 images: the check reads every file)."""
    from rich.markup import escape

    from kdetect.data.quality import quality_report, quality_warnings

    report = quality_report(annotations, frame, hash_images=len(annotations.records) <= 5000)
    for line in quality_warnings(report):
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False)


def _check_anchors(model, annotations, recipe: Recipe, console) -> dict:
    """Print how many training boxes the anchors cover; warn (one line) below 98 %."""
    from rich.markup import escape

    from kdetect.recipes.checks import anchor_report, anchor_warning

    report = anchor_report(model, annotations, tuple(recipe.data.image_size), recipe.model.rpn)
    if report["covered"] is not None:
        console.print(
            f"anchors: {report['covered']:.1%} of {report['boxes']} training boxes overlap an "
            f"anchor by IoU >= {report['covered_iou']:g} ({report['fg']:.1%} by "
            f">= {report['fg_iou']:g})",
            highlight=False,
        )
    warning = anchor_warning(report)
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    return report


def _fit(
    recipe: Recipe,
    run_dir: Path,
    state_info,
    extra_callbacks,
    console,
    builders,
    cb,
    strategy,
    data,
) -> Path:
    import keras
    from rich.markup import escape

    tcfg = recipe.train
    classes = data.classes
    if (run_dir / runs.CLASSES_FILE).is_file() and state_info is not None:
        saved = runs.read_classes(run_dir / runs.CLASSES_FILE)
        if saved != classes:
            raise CheckpointError(f"{run_dir}: the data's classes differ from classes.json")
    runs.write_classes(run_dir / runs.CLASSES_FILE, classes)
    samples = _write_samples(run_dir / "samples", data.val_annotations, recipe.eval.samples)
    if data.train_annotations is not None:
        _plot_labels(data.train_annotations, tuple(recipe.data.image_size), run_dir)

    steps_per_epoch = _steps(data.train, tcfg.steps_per_epoch)
    train_ds = data.train.repeat() if steps_per_epoch is not None else data.train
    val_ds = data.val
    if val_ds is not None and tcfg.validation_steps is not None:
        val_ds = val_ds.repeat()

    with strategy.scope():
        model = builders.build_model(recipe, len(classes))
        optimizer = builders.build_optimizer(tcfg, steps_per_epoch)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        model.compile(optimizer=optimizer, jit_compile=tcfg.jit_compile)
        optimizer.build(model.trainable_variables)

    if data.train_annotations is not None and state_info is None:
        _check_data(data.train_annotations, tuple(recipe.data.image_size), console)
        _check_anchors(model, data.train_annotations, recipe, console)

    initial_epoch, step_in_epoch, best_value = 0, 0, None
    if state_info is not None:
        try:
            model.load_weights(state_info["weights"])
        except (ValueError, OSError) as exc:
            raise CheckpointError(
                f"{state_info['weights']}: cannot restore state ({exc})"
            ) from None
        initial_epoch = int(state_info["epoch"])
        step_in_epoch = int(state_info.get("step_in_epoch", 0))
        best_value = state_info.get("best_value")
        console.print(
            f"resuming {escape(str(run_dir))} at epoch {initial_epoch + 1}"
            + (f", step {step_in_epoch}" if step_in_epoch else ""),
            highlight=False,
        )
    elif tcfg.init_from:
        source, _ = runs.load_model(tcfg.init_from)
        copied, skipped = transfer_weights(source, model)
        del source
        console.print(
            f"initialised {copied} of {copied + len(skipped)} variables from "
            f"{escape(tcfg.init_from)}" + (f" ({len(skipped)} re-initialised)" if skipped else ""),
            highlight=False,
        )

    if initial_epoch >= tcfg.epochs:
        console.print(
            f"{escape(str(run_dir))}: already trained for {initial_epoch} epochs", highlight=False
        )
    state = cb.TrainingState(initial_epoch)
    monitors = {"val_loss": "val_loss", "loss": "loss", "map": "val_map", "none": None}
    monitor = monitors[tcfg.checkpoint.best]
    if monitor == "val_loss" and val_ds is None:
        monitor = "loss"
    manager = cb.CheckpointManager(
        run_dir / runs.CHECKPOINTS_DIR,
        state,
        every_epochs=tcfg.checkpoint.every_epochs,
        every_steps=tcfg.checkpoint.every_steps,
        keep=tcfg.checkpoint.keep,
        monitor=monitor,
        best_value=best_value,
    )
    progress = cb.RichProgress(
        tcfg.epochs, steps_per_epoch, recipe.data.batch_size, console=console, state=state
    )
    callback_list: list = [state, cb.LearningRateLogger()]
    if recipe.eval.every > 0 and data.val_annotations is not None:
        metric = recipe.eval.metric
        callback_list.append(
            cb.MeanAPEvaluator(
                data.val_annotations,
                metric,
                recipe.eval.every,
                recipe.data.batch_size,
                recipe.eval.max_images,
            )
        )
    (run_dir / "logs").mkdir(exist_ok=True)
    if tcfg.tensorboard and not _tensorboard_available():
        console.print(
            "[yellow]note:[/yellow] the tensorboard package is not installed; no TensorBoard "
            "logs (pip install tensorboard, or set train.tensorboard=false)",
            highlight=False,
        )
    elif tcfg.tensorboard:
        callback_list.append(keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False))
        if samples:
            callback_list.append(cb.ImageSummary(run_dir / "logs" / "images", samples[:4], classes))
    callback_list += [cb.StopOnNonFiniteLoss(state, run_dir), manager]
    callback_list += [cb.HistoryWriter(run_dir / runs.HISTORY_FILE), progress]
    callback_list += list(extra_callbacks)

    def fit(epochs: int, first_epoch: int, steps: int | None) -> None:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=steps,
            validation_steps=tcfg.validation_steps,
            callbacks=callback_list,
            shuffle=False,  # the pipeline shuffles
            verbose=0,
        )

    try:
        if initial_epoch < tcfg.epochs:
            if step_in_epoch and steps_per_epoch:
                # Finish the interrupted epoch (unless only its validation was left), then
                # continue with whole ones.
                if step_in_epoch < steps_per_epoch:
                    fit(initial_epoch + 1, initial_epoch, steps_per_epoch - step_in_epoch)
                initial_epoch += 1
            if initial_epoch < tcfg.epochs:
                fit(tcfg.epochs, initial_epoch, steps_per_epoch)
    except TrainingDiverged:
        progress.close()
        raise
    except KeyboardInterrupt:
        progress.close()
        manager.save_state(epoch=state.epoch, step_in_epoch=state.step_in_epoch, interrupted=True)
        _update_meta(run_dir, status="interrupted")
        console.print(
            f"[yellow]interrupted[/yellow] at epoch {state.epoch + 1}, step "
            f"{state.step_in_epoch}; state saved. Continue with: kdetect train "
            f"{escape(str(run_dir))} --resume",
            highlight=False,
        )
        raise

    _save_final(model, run_dir / runs.MODEL_FILE, tcfg.jit_compile)
    _summary_table(progress.rows, console)
    chief = distribute.is_chief(tcfg.distribute)  # other workers train into a scratch folder
    if chief and recipe.eval.every > 0 and data.val_annotations is not None:
        tensorboard = tcfg.tensorboard and _tensorboard_available()
        report_finished_run(
            model,
            data.val_annotations,
            recipe.eval.metric,
            recipe.data.batch_size,
            run_dir,
            console,
            tcfg.epochs if tensorboard else None,
        )
    best = None if manager.best_value is None else [manager.monitor, manager.best_value]
    _update_meta(run_dir, status="finished", epochs=tcfg.epochs, best_metric=best)
    console.print(f"run directory: [bold]{escape(str(run_dir))}[/bold]", highlight=False)
    return run_dir


def _tensorboard_available() -> bool:
    """``tf.summary`` writes nothing without the tensorboard package (not a TF dependency)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _save_final(model, path: Path, jit_compile: bool) -> None:
    """Save the trained detector without its training optimizer.

    The optimizer state lives in ``checkpoints/``; ``model.keras`` is the deliverable and must load
    with plain ``keras.saving.load_model`` (no kdetect learning-rate schedule inside).
    """
    import keras

    model.compile(optimizer=keras.optimizers.SGD(), jit_compile=jit_compile)
    runs.save_keras(model, path)
