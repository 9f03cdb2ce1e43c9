"""Shared helpers of the training and prediction tests: one tiny shapes run per session.

The tiny run is trained once (through the CLI) and reused by ``test_cli_train.py``,
``test_predict.py`` and others; it uses the tiny backbone on 64x64 images for two steps. The
trained run (``trained_shapes_run``) is the shapes recipe trained for 400 steps, shared by the
end-to-end and export tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "recipes" / "shapes.yaml"
BCCD = (ROOT / ".." / "shared" / "data" / "bccd").resolve()

# Small and fast: two 64x64 images per step, few proposals, a tiny box head.
TINY = [
    "model.image_size=[64,64]",
    "data.batch_size=2",
    "data.shapes.num_train=8",
    "data.shapes.num_val=4",
    "train.epochs=1",
    "train.steps_per_epoch=2",
    "train.validation_steps=1",
    "train.schedule.warmup_steps=1",
    "train.checkpoint.best=map",
    "eval.every=1",
    "eval.samples=3",
    "model.fpn_channels=16",
    "model.box.head_units=32",
    "model.box.batch_size_per_image=32",
    "model.rpn.batch_size_per_image=64",
    "model.rpn.pre_nms_top_n_train=100",
    "model.rpn.post_nms_top_n_train=50",
    "model.rpn.pre_nms_top_n_test=50",
    "model.rpn.post_nms_top_n_test=20",
]

# About 400 Adam steps of 4 images at 128x128: ~2 minutes on 2 CPU cores; a detector that has
# learnt the shapes (validation mAP well above 0.5).
TRAINED = [
    "data.shapes.num_train=512",
    "data.shapes.num_val=64",
    "data.batch_size=4",
    "train.epochs=1",
    "train.steps_per_epoch=400",
    "train.optimizer.lr=0.002",
    "train.schedule.warmup_steps=30",
    "eval.every=0",
    "train.checkpoint.best=val_loss",
    "eval.samples=0",
]

_RUNS: dict[str, Path] = {}


def set_args(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    args: list[str] = []
    for item in overrides:
        args += ["--set", item]
    return args


def kdetect(*args: str) -> int:
    """Run the CLI in this process; returns the exit code."""
    from kdetect.cli import main

    return main([str(a) for a in args])


def needs_shapes() -> None:
    pytest.importorskip("kdetect.data.shapes", reason="kdetect.data.shapes not available")


def tiny_run(tmp_path_factory) -> Path:
    """Train (once per session) the tiny shapes run through ``kdetect train``."""
    needs_shapes()
    if "tiny" not in _RUNS:
        run = tmp_path_factory.mktemp("runs") / "tiny"
        assert kdetect("train", SHAPES, "--run-dir", run, *set_args(TINY)) == 0
        _RUNS["tiny"] = run
    return _RUNS["tiny"]


def trained_shapes_run(tmp_path_factory) -> Path:
    """Train (once per session) the shapes recipe for real (``TRAINED``), in Python."""
    needs_shapes()
    if "trained" not in _RUNS:
        from kdetect.recipes import train

        run = tmp_path_factory.mktemp("e2e") / "run"
        _RUNS["trained"] = train(SHAPES, run_dir=run, overrides=TRAINED)
    return _RUNS["trained"]


def family_run(
    tmp_path_factory,
    model_type: str,
    steps: int = 400,
    lr: float = 0.002,
    overrides: tuple[str, ...] = (),
) -> Path:
    """Train (once per session) the shapes recipe as ``model_type`` for ``steps`` steps of
    ``TRAINED`` at learning rate ``lr`` with the type's own ``overrides`` (a learnt detector
    of that type), through the CLI."""
    needs_shapes()
    key = f"family-{model_type}"
    if key not in _RUNS:
        run = tmp_path_factory.mktemp("family") / model_type
        settings = [
            *TRAINED,
            f"train.steps_per_epoch={steps}",
            f"train.optimizer.lr={lr}",
            f"model.type={model_type}",
            "eval.samples=8",  # run/samples: the photos the command tests feed
            *overrides,
        ]
        assert kdetect("train", SHAPES, "--run-dir", run, *set_args(settings)) == 0
        _RUNS[key] = run
    return _RUNS[key]


def interrupt_after(steps: int):
    """A Keras callback that simulates Ctrl-C once the optimizer has taken ``steps`` steps."""
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) >= steps:
                raise KeyboardInterrupt

    return Interrupt()


def has_bccd() -> bool:
    return (BCCD / "Annotations").is_dir() and not os.environ.get("KDETECT_NO_SHARED")
