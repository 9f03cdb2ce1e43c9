"""What training shows: a live progress bar (or one line per epoch) and the summary table.

Both stay readable at 80 columns: the bar's line holds the step count, learning rate, speed and
time left, and the loss terms go on a line of their own that wraps between terms; the summary table
splits into several tables (each repeating the epoch) rather than cutting numbers short.
"""

from __future__ import annotations

import time
from typing import Any

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from kdetect.engine.callbacks import TrainingState, current_lr, scalar
from kdetect.models import loss_names
from kdetect.runs import VAL_MAP_KEY


class _TwoLineProgress(Progress):
    """A progress bar with each task's loss terms on the line below its bar."""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            losses = task.fields.get("losses", "")
            if losses:
                yield Text(losses, overflow="fold", no_wrap=False)


class RichProgress(keras.callbacks.Callback):
    """Rich progress: epoch/step, per-term losses, learning rate, images/s and ETA.

    On a terminal a live bar is shown; elsewhere (logs, CI) one line per epoch is printed.
    """

    def __init__(
        self,
        epochs: int,
        steps_per_epoch: int | None,
        batch_size: int,
        console=None,
        state: TrainingState | None = None,
    ):
        super().__init__()
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.batch_size = batch_size
        self.console = console or Console(stderr=True)
        self.state = state
        self._progress = None
        self._task = None
        self._epoch_start = 0.0
        self._seen = 0
        self._first_step_end = 0.0
        self.rows: list[dict[str, Any]] = []

    def _make_progress(self):
        return _TwoLineProgress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._progress = self._make_progress()
        self._progress.start()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None  # a task of the bar just closed (a resumed run calls fit twice)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = time.perf_counter()
        self._seen = 0
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(
                "train", total=self.steps, epoch=epoch + 1, epochs=self.epochs, stats="", losses=""
            )

    def _rate(self) -> float:
        """Images per second, leaving out the first step (tracing and compilation)."""
        if self._seen > 1:
            elapsed = max(time.perf_counter() - self._first_step_end, 1e-9)
            return (self._seen - 1) * self.batch_size / elapsed
        elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
        return self._seen * self.batch_size / elapsed

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._seen += 1
        if self._seen == 1:
            self._first_step_end = time.perf_counter()
        if self._progress is None or self._task is None:
            return
        logs = logs or {}
        losses = [f"{k.removesuffix('_loss')} {scalar(logs[k]):.3f}" for k in loss_names(logs)]
        stats = f"lr {current_lr(self.model):.1e}  {self._rate():.1f} img/s"
        self._progress.update(
            self._task, completed=batch + 1, stats=stats, losses="  ".join(losses)
        )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        elapsed = time.perf_counter() - self._epoch_start
        row = {"epoch": epoch + 1, "time": elapsed, "images_per_s": self._rate(), **logs}
        self.rows.append(row)
        parts = [f"loss {scalar(logs.get('loss', float('nan'))):.4f}"]
        for key in ("val_loss", VAL_MAP_KEY):
            if key in logs:
                parts.append(f"{key} {scalar(logs[key]):.4f}")
        if "lr" in logs:
            parts.append(f"lr {logs['lr']:.2e}")
        parts.append(f"{row['images_per_s']:.1f} img/s")
        parts.append(f"{elapsed:.1f}s")
        for line in fit_fields([f"epoch {epoch + 1}/{self.epochs}", *parts], self.console.width):
            self.console.print(line, highlight=False, markup=False)


def fit_fields(fields: list[str], width: int, separator: str = "  ") -> list[str]:
    """``fields`` joined by ``separator`` into lines of at most ``width`` characters, broken
    only between fields (a field longer than the width gets a line of its own); continuation
    lines are indented by two spaces."""
    lines = [fields[0]]
    for field in fields[1:]:
        if len(lines[-1]) + len(separator) + len(field) <= width:
            lines[-1] += separator + field
        else:
            lines.append("  " + field)
    return lines


def summary_table(rows: list[dict[str, Any]], console) -> None:
    """The table of every epoch's row of :class:`RichProgress`: the epoch, the detector's loss
    terms, validation, learning rate, speed and time (columns seen in no row are left out). Where
    the columns do not fit the console's width, they are split over several tables, each starting
    with the epoch, so that no number is cut short."""
    if not rows:
        return
    columns = [("epoch", "epoch", "{:d}")]
    columns += [
        (k, k.removesuffix("_loss").replace("_", " "), "{:.4f}") for k in loss_names(rows[-1])
    ]
    columns += [
        ("val_loss", "val loss", "{:.4f}"),
        (VAL_MAP_KEY, "val mAP", "{:.4f}"),
        ("lr", "lr", "{:.2e}"),
        ("images_per_s", "img/s", "{:.1f}"),
        ("time", "time (s)", "{:.1f}"),
    ]
    present = [c for c in columns if any(c[0] in r for r in rows)]
    cells = {key: [_cell(row.get(key), key, fmt) for row in rows] for key, _, fmt in present}
    width = {key: max(len(title), *(len(c) for c in cells[key])) for key, title, _ in present}
    # A column takes its width plus 3 (padding and border), the table 1 more; the epoch column
    # opens every part.
    epoch, rest = present[0], present[1:]
    parts: list[list] = [[epoch]]
    for column in rest:
        used = sum(width[key] + 3 for key, _, _ in parts[-1]) + 1
        if used + width[column[0]] + 3 > console.width and len(parts[-1]) > 1:
            parts.append([epoch])
        parts[-1].append(column)
    for number, part in enumerate(parts):
        title = "training summary" + (f" ({number + 1}/{len(parts)})" if len(parts) > 1 else "")
        table = Table(title=title)
        for key, header, _ in part:
            table.add_column(header, justify="right", no_wrap=True, min_width=width[key])
        for index in range(len(rows)):
            table.add_row(*(cells[key][index] for key, _, _ in part))
        console.print(table)


def _cell(value, key: str, fmt: str) -> str:
    if value is None:
        return ""
    return fmt.format(int(value) if key == "epoch" else float(value))
