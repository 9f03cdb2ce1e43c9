"""What training shows: a live progress bar (or one line per epoch) and the summary table."""

from __future__ import annotations

import time
from typing import Any

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kdetect.models import loss_names
from kdetect.recipes.callbacks import TrainingState, current_lr, scalar
from kdetect.runs import VAL_MAP_KEY


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
        return Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
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
                "train", total=self.steps, epoch=epoch + 1, epochs=self.epochs, stats=""
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
        parts = [f"{k.removesuffix('_loss')} {scalar(logs[k]):.3f}" for k in loss_names(logs)]
        parts.append(f"lr {current_lr(self.model):.2e}")
        parts.append(f"{self._rate():.1f} img/s")
        self._progress.update(self._task, completed=batch + 1, stats="  ".join(parts))

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
        self.console.print(
            f"[bold]epoch {epoch + 1}/{self.epochs}[/bold]  " + "  ".join(parts), highlight=False
        )


def summary_table(rows: list[dict[str, Any]], console) -> None:
    """The table of every epoch's row of :class:`RichProgress` (columns seen in no row are left
    out)."""
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
        (VAL_MAP_KEY, "val mAP", "{:.4f}"),
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
