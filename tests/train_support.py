"""Shared helpers of the training and prediction tests: one tiny shapes run per session.

The tiny run is trained once (through the CLI) and reused by ``test_cli_train.py``,
``test_predict.py`` and others; it uses the tiny backbone on 64x64 images for two steps. The
trained run (``trained_shapes_run``) is the shapes recipe trained for 400 steps, shared by the
end-to-end and export tests (and, under pytest-xdist, by the workers: :func:`shared_run`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
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

    def train_into(run: Path) -> None:
        from kdetect.engine import train

        train(SHAPES, run_dir=run, overrides=TRAINED)

    return shared_run(tmp_path_factory, "trained", train_into)


def shared_run(tmp_path_factory, key: str, train_into, name: str = "run") -> Path:
    """The run ``key``, trained once per test session by ``train_into(folder)``. Under
    pytest-xdist (``make test``) the workers share it: the first to need it trains it while
    the others wait on a lock, then all read the same folder (so its users only read it).
    The run directory is called ``name``."""
    if key in _RUNS:
        return _RUNS[key]
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        run = tmp_path_factory.mktemp(key) / name
        train_into(run)
    else:
        shared = tmp_path_factory.getbasetemp().parent / f"shared-run-{key}"
        run = shared / name
        with open(f"{shared}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not (shared / "trained").exists():
                shutil.rmtree(shared, ignore_errors=True)  # a worker that failed half-way
                shared.mkdir()
                train_into(run)
                (shared / "trained").touch()
    _RUNS[key] = run
    return run


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
    settings = [
        *TRAINED,
        f"train.steps_per_epoch={steps}",
        f"train.optimizer.lr={lr}",
        f"model.type={model_type}",
        "eval.samples=8",  # run/samples: the photos the command tests feed
        *overrides,
    ]

    def train_into(run: Path) -> None:
        assert kdetect("train", SHAPES, "--run-dir", run, *set_args(settings)) == 0

    return shared_run(tmp_path_factory, f"family-{model_type}", train_into, model_type)


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
