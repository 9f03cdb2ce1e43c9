"""``kdetect evaluate``: score a model on a dataset split, or a detections file offline.

``kdetect.evaluation`` is imported inside the functions: ``kdetect --help`` imports every command
module and must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kdetect.cli import app
from kdetect.cli._options import InvalidBoxOption, InvalidBoxPolicy, SourceType
from kdetect.plumbing.errors import KdetectError
from kdetect.plumbing.paths import check_kind, check_not_input
from kdetect.runs import METRICS_FILE, PLOTS_DIR

console = Console()


def _check_metric(value: str | None) -> str | None:
    """A bad ``--metric`` is a usage error (exit 2), as a bad choice of any other option is."""
    from kdetect.evaluation.api import METRICS

    if value is not None and value not in METRICS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(METRICS)}")
    return value


@app.command("evaluate")
def evaluate(
    model: Annotated[
        str | None,
        typer.Argument(help="Run directory (model.keras + classes.json) or a .keras file."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Dataset folder (model mode); same as --ground-truth."),
    ] = None,
    ground_truth: Annotated[
        Path | None,
        typer.Option(help="Dataset folder, or for COCO the instances JSON itself."),
    ] = None,
    detections: Annotated[
        Path | None,
        typer.Option(
            help="Offline mode: kdetect prediction JSON lines or a COCO results JSON list."
        ),
    ] = None,
    type: Annotated[
        SourceType | None,
        typer.Option("--type", help="Format of the dataset (guessed when omitted)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="Dataset split to evaluate (default: the run's eval split, else val)."),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            callback=_check_metric,
            help="voc07 | voc | coco (default: the run's eval.metric; "
            "coco for COCO data, else voc07).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Write metrics.json here (default for a run dir: RUN_DIR/metrics.json)."),
    ] = None,
    plots: Annotated[
        Path | None,
        typer.Option(
            help="Write per-class precision-recall curves, the F1 curve and the confusion "
            "matrix (PNG) here (default for a run dir: RUN_DIR/plots)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per predict call (model mode).")] = 1,
    on_invalid_box: InvalidBoxOption = InvalidBoxPolicy.error,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="MODEL is a run being trained: evaluate each checkpoint as it is written, "
            "until the final model.keras.",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            help="With --watch: give up after this many seconds without a new checkpoint."
        ),
    ] = 600.0,
) -> None:
    """Evaluate a detector: VOC AP (devkit-exact) or COCO metrics (pycocotools).

    Model mode:   kdetect evaluate RUN_DIR [--data DATASET] [--split val] [--metric voc07]
                  (without --data: the dataset and split of the run's recipe)

    Offline mode: kdetect evaluate --ground-truth PATH --detections FILE [--type coco]
    """
    from kdetect.evaluation import evaluate_offline

    format = type.value if type else None
    on_invalid_box = on_invalid_box.value

    # A run directory keeps its own metrics.json and plots/ (the defaults); nothing else of it,
    # and no other run, may be an output.
    run = Path(model) if model is not None and Path(model).is_dir() else None
    own = {(run / name).resolve() for name in (METRICS_FILE, PLOTS_DIR)} if run else set()
    for path, option, kind in ((output, "--output", "file"), (plots, "--plots", "folder")):
        if path is not None:
            if path.resolve() not in own:
                inputs = [model, data, ground_truth, detections]
                check_not_input(path, inputs, option, whole=[model])
            check_kind(path, kind, option)
    if watch:
        if model is None or detections is not None or data is not None or ground_truth is not None:
            raise KdetectError("--watch takes a run directory as MODEL and no dataset options")
        _watch(model, split, metric, timeout, batch_size, output)
        return
    if data is not None and ground_truth is not None and data != ground_truth:
        raise KdetectError("give the dataset once: --data or --ground-truth")
    dataset = ground_truth if ground_truth is not None else data
    if detections is not None:
        if model is not None:
            raise KdetectError("give either MODEL or --detections, not both")
        if dataset is None:
            raise KdetectError("--detections needs --ground-truth PATH")
        metrics = evaluate_offline(
            dataset, detections, metric, format, split or "val", plots, on_invalid_box
        )
    elif model is not None:
        if plots is None and Path(model).is_dir():  # a run directory keeps its own pictures
            plots = Path(model) / PLOTS_DIR
        metrics = _evaluate_run(
            model, dataset, format, split, metric, batch_size, plots, on_invalid_box
        )
        if output is None and Path(model).is_dir():
            output = Path(model) / METRICS_FILE
    else:
        raise KdetectError("nothing to evaluate: give MODEL (a run directory) or --detections FILE")
    _report(metrics, output, plots)


def _report(metrics: dict, output: Path | None, plots: Path | None) -> None:
    """Print the metrics table, write metrics.json and say where everything went."""
    from kdetect.evaluation import print_metrics, write_metrics

    print_metrics(metrics, console)
    if output is not None:
        console.print(f"metrics written to {write_metrics(metrics, output)}")
    if plots is not None:
        console.print(
            f"plots (precision-recall, F1, confusion matrix, examples) written to {plots}"
        )


def _watch(model: str, split, metric, timeout: float, batch_size: int, output) -> None:
    """``--watch``: evaluate each checkpoint of a run as it is written; the last one's metrics
    are printed and written."""
    from kdetect.engine.evaluate_run import watch_run
    from kdetect.evaluation import print_metrics, write_metrics
    from kdetect.evaluation.api import headline

    def report(path: Path, metrics: dict) -> None:
        console.print(f"{path.name}: {metrics['metric']} {headline(metrics):.4f}")

    console.print(f"watching {model} for checkpoints (timeout {timeout:g} s)")
    results = watch_run(model, split, metric, timeout, batch_size=batch_size, on_result=report)
    print_metrics(results[-1][1], console)
    write_metrics(results[-1][1], output or Path(model) / METRICS_FILE)


def _evaluate_run(model, dataset, format, split, metric, batch_size, plots, on_invalid_box) -> dict:
    """Model mode: run the saved model over the split (the run's dataset when none is given)."""
    from kdetect.engine.evaluate_run import evaluate_saved_model
    from kdetect.runs import inspect_run

    inspect_run(model)  # a missing run is named as such, before any --data hint
    if dataset is None and not Path(model).is_dir():
        raise KdetectError(f"{model}: give the dataset to evaluate on with --data DATASET_DIR")
    return evaluate_saved_model(
        model, dataset, format, split, metric, batch_size, True, plots, on_invalid_box
    )
