"""A loss that becomes NaN stops training at once: one line naming the term and step, exit 1,
the last good checkpoint kept, the run marked failed, no model.keras from diverged weights."""

from __future__ import annotations

import json
import re

from tests.train_support import SHAPES, TINY, kdetect, needs_shapes, set_args


def test_nan_loss_stops_training_with_one_line(tmp_path, capsys):
    needs_shapes()
    run = tmp_path / "run"
    overrides = [item for item in TINY if not item.startswith(("train.checkpoint.best", "eval."))]
    overrides += [
        "train.optimizer.lr=1e8",  # diverges within two steps
        "train.epochs=2",
        "train.steps_per_epoch=4",
        "train.checkpoint.every_steps=1",
        "train.checkpoint.best=val_loss",
        "eval.every=0",
        "eval.samples=0",
    ]
    assert kdetect("train", SHAPES, "--run-dir", run, *set_args(overrides)) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    message = " ".join(err.split())
    # nan or inf, whichever the seeded data order reaches first
    assert "training stopped:" in message and re.search(r" is (nan|inf) at epoch 1, step ", message)
    assert "train.optimizer.lr" in message
    assert json.loads((run / "kdetect.json").read_text())["status"] == "failed"
    assert not (run / "model.keras").exists()
    kept = sorted(p.name for p in (run / "checkpoints").glob("*.keras"))
    step = int(message.split("(optimizer step ")[1].split(")")[0])
    assert kept and all(int(name.split("-")[1].split(".")[0]) < step for name in kept)
