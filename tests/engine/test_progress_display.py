"""Training's progress display and summary table, rendered through fixed-width consoles: at 80
columns every line fits and no number is cut short (no ellipsis); in a pipe the per-epoch lines
carry the same fields."""

from __future__ import annotations

import io
import re

import keras
import pytest
from rich.console import Console

from kdetect.engine.progress import RichProgress, summary_table

FASTER_RCNN_LOGS = {
    "loss": 1.97123,
    "rpn_cls_loss": 0.68912,
    "rpn_box_loss": 0.12345,
    "rcnn_cls_loss": 0.91234,
    "rcnn_box_loss": 0.24567,
}
FCOS_LOGS = {
    "loss": 1.5,
    "classification_loss": 1.1,
    "bbox_regression_loss": 0.3,
    "bbox_ctrness_loss": 0.6,
}


def console(width: int, terminal: bool) -> Console:
    return Console(
        file=io.StringIO(), width=width, force_terminal=terminal, color_system=None, soft_wrap=False
    )


def output(cons: Console) -> list[str]:
    return cons.file.getvalue().splitlines()


def model_with_lr(lr: float) -> keras.Model:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model


def run_steps(progress: RichProgress, logs: dict, steps: int) -> None:
    progress.on_epoch_begin(0)
    for step in range(steps):
        progress.on_train_batch_end(step, logs)


@pytest.mark.parametrize("logs", [FASTER_RCNN_LOGS, FCOS_LOGS], ids=["faster_rcnn", "fcos"])
def test_the_live_bar_fits_80_columns_with_every_field(logs):
    cons = console(80, terminal=True)
    progress = RichProgress(epochs=12, steps_per_epoch=250, batch_size=4, console=cons)
    progress.set_model(model_with_lr(0.0025))
    progress._progress = progress._make_progress()  # rendered below, not started live
    run_steps(progress, logs, 37)
    cons.print(progress._progress.get_renderable())
    lines = output(cons)
    assert all(len(line) <= 80 for line in lines), lines
    text = "\n".join(lines)
    assert "…" not in text
    for field in ("epoch 1/12", "37/250", "lr 2.5e-03", "img/s"):
        assert field in text, (field, text)
    assert re.search(r"\d:\d\d:\d\d", text), text  # time left
    for key, value in logs.items():
        assert f"{key.removesuffix('_loss')} {value:.3f}" in text, (key, text)


def test_epoch_lines_in_a_pipe_keep_their_numbers_whole():
    cons = console(80, terminal=False)
    progress = RichProgress(epochs=3, steps_per_epoch=10, batch_size=4, console=cons)
    progress.set_model(model_with_lr(0.01))
    run_steps(progress, FASTER_RCNN_LOGS, 10)
    progress.on_epoch_end(
        0, {**FASTER_RCNN_LOGS, "val_loss": 1.23456, "val_mAP": 0.56789, "lr": 0.01}
    )
    text = "\n".join(output(cons))
    assert all(len(line) <= 80 for line in output(cons))
    for field in ("epoch 1/3", "loss 1.9712", "val_loss 1.2346", "val_mAP 0.5679", "lr 1.00e-02"):
        assert field in text, (field, text)
    assert re.search(r"\d+\.\d img/s  \d+\.\ds", text), text


@pytest.mark.parametrize("width", [80, 120, 200])
def test_the_summary_table_splits_rather_than_cutting_numbers(width):
    rows = [
        {
            "epoch": e,
            **FASTER_RCNN_LOGS,
            "val_loss": 1.5,
            "val_mAP": 0.25,
            "lr": 2.5e-3,
            "images_per_s": 123.4,
            "time": 1234.5,
        }
        for e in range(1, 11)
    ]
    cons = console(width, terminal=True)
    summary_table(rows, cons)
    lines = output(cons)
    text = "\n".join(lines)
    assert all(len(line) <= width for line in lines), lines
    assert "…" not in text
    for cell in (
        "1.9712",
        "0.6891",
        "0.1235",
        "0.9123",
        "0.2457",
        "1.5000",
        "0.2500",
        "2.50e-03",
        "123.4",
        "1234.5",
        "rcnn box",
        "val mAP",
    ):
        assert cell in text, (cell, text)
    tables = text.count("training summary")
    assert tables == (1 if width >= 120 else 2), text
    # each table lists every epoch
    assert text.count(" 10 ") >= tables
