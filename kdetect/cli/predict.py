"""``kdetect predict``: detections on images, folders and videos as JSON lines, or (``--format``)
as COCO results, VOC XML, YOLO labels or Label Studio tasks (:mod:`kdetect.apps.predict_formats`).

kdetect's own heavier modules (``predict``, ``data``, ``recipes``) are imported inside the
functions: ``kdetect --help`` imports every command module and must not load TensorFlow.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.markup import escape

from kdetect.cli import app, err_console, print_error
from kdetect.cli._options import image_size_option
from kdetect.plumbing.errors import KdetectError
from kdetect.plumbing.paths import atomic_path, check_free, check_kind, input_guard


class OutputFormat(str, Enum):
    jsonl = "jsonl"
    coco = "coco"
    voc = "voc"
    yolo = "yolo"
    labelstudio = "labelstudio"


def _check_iou(value: float | None) -> float | None:
    if value is not None and not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"expected a value in (0, 1], got {value}")
    return value


@app.command("predict")
def predict(
    model: Annotated[
        Path,
        typer.Argument(help="Run directory, .keras file or packed .kdet run.", show_default=False),
    ],
    paths: Annotated[
        list[Path],
        typer.Argument(help="Images, folders of images, or videos.", show_default=False),
    ],
    min_score: Annotated[
        float | None,
        typer.Option(
            help="Drop detections scoring below this (default: the run's best-F1 threshold "
            "from kdetect evaluate's metrics.json, else 0.5).",
            min=0.0,
            max=1.0,
            show_default=False,
        ),
    ] = None,
    max_detections: Annotated[
        int | None, typer.Option(help="Keep at most N detections per image.", min=1)
    ] = None,
    iou: Annotated[
        float | None,
        typer.Option(
            help="IoU threshold of the final non-maximum suppression, in (0, 1] (default: the "
            "model's).",
            callback=_check_iou,
            show_default=False,
        ),
    ] = None,
    agnostic: Annotated[
        bool,
        typer.Option("--agnostic", help="Suppress overlapping boxes across classes too."),
    ] = False,
    image_size: Annotated[  # (H, W) after the option's callback
        str | None,
        image_size_option(
            "Resize images into this frame: H,W or N (default: the model's; see docs/cli.md)."
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(metavar="CLASS", help="Keep only this class (repeatable)."),
    ] = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option(metavar="CLASS", help="Drop this class (repeatable)."),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also read sub-folders.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write JSON lines here instead of stdout."),
    ] = None,
    save_images: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Write each image with its boxes drawn into DIR."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Images per model call (same-size images only).", min=1)
    ] = 1,
    frame_step: Annotated[int, typer.Option(help="Videos: predict every N-th frame.", min=1)] = 1,
    format: Annotated[
        OutputFormat,
        typer.Option("--format", help="jsonl, or (with --output) coco, voc, yolo or labelstudio."),
    ] = OutputFormat.jsonl,
    format_option: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="coco: ground_truth=FILE; yolo: save_conf=true; labelstudio: image_root=DIR, "
            "model_version=NAME (repeatable).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="voc/yolo: replace a non-empty --output folder.")
    ] = False,
) -> None:
    """Predict objects; one JSON line per image (or video frame), or --format.

    A path that cannot be read is reported on stderr and skipped; the exit code is 1 when
    anything failed. No output (--output, --save-images) may be one of the inputs; --output is
    written under a temporary name and renamed into place at the end.
    """
    from kdetect.apps.predict import Detector, collect_inputs, read_frames
    from kdetect.runs.catalog import check_model_file

    items, problems = collect_inputs([str(p) for p in paths], recursive=recursive)
    if not items:  # nothing to predict: said before the model is loaded
        check_model_file(model)  # a missing run or model is named first
        for problem in problems[:-1]:
            print_error(problem)
        raise KdetectError(problems[-1] if problems else "no input to predict")
    options = _format_options(format.value, format_option, output, items)
    folders = [p for p in paths if p.is_dir()]  # read as a whole (a later -r run would read
    # drawn pictures or outputs inside them back in)
    check_drawn = _check_outputs(
        model, items, output, save_images, format.value, overwrite, folders
    )
    detector = Detector(
        model,
        min_score=_min_score(model, min_score),
        max_detections=max_detections,
        only=only,
        ignore=ignore,
        nms_iou=iou,
        class_agnostic=agnostic,
        image_size=image_size,
    )
    for problem in problems:
        print_error(problem)
    if save_images is not None:
        save_images.mkdir(parents=True, exist_ok=True)
    tally = _Tally(detector.classes, failures=len(problems))
    collected: list[dict] = []
    with _output_stream(output if format == OutputFormat.jsonl else None) as out:
        emit = _json_lines(out) if format == OutputFormat.jsonl else collected.append
        frames = read_frames(
            _with_progress(items, output is not None),
            frame_step,
            drawn=_drawn_paths(save_images, check_drawn),
            on_error=tally.failed,
            on_read=tally.read,
        )
        for _, line in detector.predict_frames(frames, batch_size):
            emit(line)
            tally.add(line)
    if format != OutputFormat.jsonl:
        _write_format(format.value, collected, detector.classes, output, options, model)
    if output is not None:
        err_console.print(f"wrote {tally.done} result(s) to {escape(str(output))}", highlight=False)
    # a terminal wraps it between words; a pipe or a log keeps it one line
    err_console.print(tally.summary(), highlight=False, soft_wrap=not err_console.is_terminal)
    if tally.failures:
        total = len(items) + len(problems)
        raise KdetectError(f"{tally.failures} of {total} input(s) could not be read")


def _format_options(fmt: str, pairs: list[str] | None, output: Path | None, items: list) -> dict:
    """The checked ``--format-option`` values; other formats than jsonl need ``--output`` and
    images (no videos) that the format can point to (labelstudio: inside ``image_root``)."""
    from kdetect.apps.predict_formats import check_images, parse_options

    options = parse_options(fmt, pairs)
    if fmt != "jsonl":
        if output is None:
            raise KdetectError(f"--format {fmt}: needs --output PATH")
        videos = [item.display for item in items if item.video]
        if videos:
            raise KdetectError(f"--format {fmt}: {videos[0]} is a video (use --format jsonl)")
    check_images(fmt, options, [item.display for item in items])
    return options


def _write_format(fmt: str, lines: list, classes, output: Path, options: dict, model: Path):
    """Write the collected result lines as ``fmt`` (see kdetect.apps.predict_formats)."""
    from kdetect.apps.predict_formats import model_version, write_predictions
    from kdetect.runs import inspect_run

    version = model_version(inspect_run(model)) if fmt == "labelstudio" else "kdetect"
    written = write_predictions(fmt, lines, list(classes), output, options, version)
    for path in written[1:]:
        err_console.print(f"wrote {escape(str(path))}", highlight=False)


def _check_outputs(
    model: Path,
    items: list,
    output: Path | None,
    save_images: Path | None,
    fmt: str = "jsonl",
    overwrite: bool = False,
    folders: list[Path] | tuple = (),
):
    """Refuse outputs that are (or hold) an input or are inside a run (the model's or any
    other) or inside an input folder; returns the check for each drawn image."""
    from kdetect.apps.predict import drawn_path
    from kdetect.apps.predict_formats import FILE_FORMATS
    from kdetect.runs import CLASSES_FILE, MODEL_FILE

    inputs = [item.path for item in items] + [model]
    # read as a whole: nothing is written inside them
    run = ([model] if model.is_dir() else []) + list(folders)
    if model.is_dir():
        inputs += [model / MODEL_FILE, model / CLASSES_FILE]
    if output is not None:
        folder = fmt not in FILE_FORMATS
        input_guard(inputs, replaces=folder, whole=run)(output)
        check_kind(output, "folder" if folder else "file")
        if folder:
            check_free(output, overwrite)
    check_drawn = input_guard(inputs, "--save-images", whole=run)
    if save_images is not None:
        input_guard([], "--save-images", whole=run)(save_images)
        check_kind(save_images, "folder", "--save-images")
        for item in items:
            if not item.video:
                check_drawn(drawn_path(save_images, item))
    return check_drawn


def _min_score(model: Path, min_score: float | None) -> float:
    """``--min-score``, else the run's best-F1 threshold (said on stderr), else the default."""
    from kdetect.runs import best_min_score, inspect_run

    if min_score is not None:
        return min_score
    min_score, source = best_min_score(inspect_run(model))
    if source != "default":
        err_console.print(f"min score {min_score:.2f} ({source})", highlight=False)
    return min_score


@contextmanager
def _output_stream(output: Path | None) -> Iterator[TextIO]:
    """stdout, or ``output`` written under a temporary name and renamed into place at the end."""
    if output is None:
        yield sys.stdout
        return
    with atomic_path(output) as tmp, tmp.open("w", encoding="utf-8") as out:
        yield out


def _drawn_paths(folder: Path | None, check_drawn):
    """Where --save-images draws each image and video frame (None without it), each checked
    against the inputs."""
    from kdetect.apps.predict import drawn_path

    if folder is None:
        return None

    def drawn(item, index: int | None) -> Path:
        target = drawn_path(folder, item, index)
        check_drawn(target)
        return target

    return drawn


def _json_lines(out: TextIO) -> Callable[[dict], None]:
    """Write each result as one JSON line, flushed (so a pipe sees it at once)."""

    def emit(line: dict) -> None:
        out.write(json.dumps(line) + "\n")
        out.flush()

    return emit


class _Tally:
    """Counts what predict read and found, for its closing lines: inputs read and failed, images
    (and video frames), objects per class, seconds per image."""

    def __init__(self, classes, failures: int = 0):
        self.classes = list(classes or [])
        self.images = self.frames = 0
        self.done = 0  # inputs read (a video counts once)
        self.failures = failures  # inputs that could not be read
        self.per_class: dict[str, int] = {}
        self.started = time.perf_counter()

    def read(self, item) -> None:
        self.done += 1

    def failed(self, item, error: KdetectError) -> None:
        self.failures += 1
        print_error(error)

    def add(self, line: dict) -> None:
        if "frame" in line:
            self.frames += 1
        else:
            self.images += 1
        for item in line["objects"]:
            self.per_class[item["label"]] = self.per_class.get(item["label"], 0) + 1

    def summary(self) -> str:
        seen = self.images + self.frames
        elapsed = time.perf_counter() - self.started
        what = f"{self.images} image(s)" + (
            f", {self.frames} video frame(s)" if self.frames else ""
        )
        per = f", {elapsed / seen:.2f} s per image" if seen else ""
        found = sum(self.per_class.values())
        order = [c for c in self.classes if c in self.per_class]
        order += sorted(c for c in self.per_class if c not in order)
        classes = ", ".join(f"{c} {self.per_class[c]}" for c in order)
        return f"predicted {what} in {elapsed:.1f} s{per}: {found} object(s)" + (
            f" ({escape(classes)})" if classes else ""
        )


def _with_progress(items: list, show: bool):
    """Iterate with a rich progress bar on stderr (only when results do not go to stdout)."""
    if not show or not err_console.is_terminal:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description="Predicting", console=err_console, transient=True)
