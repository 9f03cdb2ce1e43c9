"""``kdetect predict``: detections on images, folders and videos as JSON lines."""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from kdetect.cli import app, err_console, print_error


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
) -> None:
    """Predict objects; one JSON line per image (or video frame).

    A path that cannot be read is reported on stderr and skipped; the exit code is 1 when
    anything failed. No output (--output, --save-images) may be one of the inputs; --output is
    written under a temporary name and renamed into place at the end.
    """
    from kdetect.data.images import load_image
    from kdetect.errors import KdetectError
    from kdetect.paths import atomic_path, check_kind, input_guard
    from kdetect.predict import Detector, collect_inputs, read_video_frames, result_line
    from kdetect.runs import CLASSES_FILE, MODEL_FILE, best_min_score, inspect_run

    items, problems = collect_inputs([str(p) for p in paths], recursive=recursive)
    inputs = [item.path for item in items] + [model]
    if model.is_dir():
        inputs += [model / MODEL_FILE, model / CLASSES_FILE]
    if output is not None:
        input_guard(inputs)(output)
        check_kind(output, "file")
    check_drawn = input_guard(inputs, "--save-images")
    if save_images is not None:
        check_kind(save_images, "folder", "--save-images")
        for item in items:
            if not item.video:
                check_drawn(_drawn_path(save_images, item.relative))
    if min_score is None:
        min_score, source = best_min_score(inspect_run(model))
        if source != "default":
            err_console.print(f"min score {min_score:.2f} ({source})", highlight=False)
    detector = Detector(
        model, min_score=min_score, max_detections=max_detections, only=only, ignore=ignore
    )
    for problem in problems:
        print_error(problem)
    if save_images is not None:
        save_images.mkdir(parents=True, exist_ok=True)
    failures, done = len(problems), 0
    tally = _Tally(detector.classes)
    with ExitStack() as stack:
        out = sys.stdout
        if output is not None:
            tmp = stack.enter_context(atomic_path(output))
            out = stack.enter_context(tmp.open("w", encoding="utf-8"))

        def emit(line: dict, image, target: Path | None) -> None:
            if target is not None:
                check_drawn(target)
            out.write(json.dumps(line) + "\n")
            out.flush()
            tally.add(line)
            if target is not None:
                with atomic_path(target) as drawn:
                    detector.draw(image, line["objects"]).save(drawn)

        pending: list[tuple] = []

        def flush() -> None:
            if not pending:
                return
            results = detector.predict_arrays([image for _, image in pending])
            for (item, image), objects in zip(pending, results, strict=True):
                line = result_line(item.display, image.shape[1], image.shape[0], objects)
                target = _drawn_path(save_images, item.relative) if save_images else None
                emit(line, image, target)
            pending.clear()

        for item in _with_progress(items, output is not None):
            try:
                if item.video:
                    flush()
                    for index, frame in read_video_frames(item.path, frame_step):
                        objects = detector.predict_arrays([frame])[0]
                        line = result_line(
                            item.display, frame.shape[1], frame.shape[0], objects, frame=index
                        )
                        target = None
                        if save_images is not None:
                            name = f"{item.relative.with_suffix('')}_{index:06d}.jpg"
                            target = save_images / name
                        emit(line, frame, target)
                else:
                    image = load_image(item.path)
                    if pending and (
                        image.shape != pending[0][1].shape or len(pending) >= batch_size
                    ):
                        flush()
                    pending.append((item, image))
                done += 1
            except KdetectError as exc:
                failures += 1
                print_error(exc)
        flush()
    if output is not None:
        err_console.print(f"wrote {done} result(s) to {escape(str(output))}", highlight=False)
    err_console.print(tally.summary(), highlight=False, soft_wrap=True)
    if failures:
        total = len(items) + len(problems)
        raise KdetectError(f"{failures} of {total} input(s) could not be read")


class _Tally:
    """Counts what predict found, for its closing line: images (and video frames), objects per
    class, seconds per image."""

    def __init__(self, classes):
        self.classes = list(classes or [])
        self.images = self.frames = 0
        self.per_class: dict[str, int] = {}
        self.started = time.perf_counter()

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


def _drawn_path(folder: Path, relative: Path) -> Path:
    """Where the drawn copy of an image goes (PNG when Pillow cannot write the suffix)."""
    suffix = relative.suffix.lower()
    if suffix not in {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}:
        relative = relative.with_suffix(".png")
    return folder / relative


def _with_progress(items: list, show: bool):
    """Iterate with a rich progress bar on stderr (only when results do not go to stdout)."""
    if not show or not err_console.is_terminal:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description="Predicting", console=err_console, transient=True)
