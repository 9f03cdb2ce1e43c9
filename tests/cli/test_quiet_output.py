"""What a user sees on stderr: kdetect's own lines, not TensorFlow's native start-up logging
(oneDNN, CUDA probes, absl) nor dependencies' deprecation warnings; ``--verbose`` shows them."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import tensorflow as tf

from kdetect.plumbing.native_logs import NATIVE_LINE
from tests.helpers import tiny_batch, tiny_model
from tests.train_support import kdetect, tiny_run

ROOT = Path(__file__).resolve().parents[2]
NOISE = ("oneDNN", "cuda", "cuInit", "absl", "DeprecationWarning", "FutureWarning")


def _kdetect(*args) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a fresh process, no logging settings of ours in the env."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("KDETECT_DEBUG", "KDETECT_VERBOSE", "TF_CPP_MIN_LOG_LEVEL"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "kdetect", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _noise(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if NATIVE_LINE.match(line) or any(word in line for word in NOISE)
    ]


def test_commands_that_load_tensorflow_print_only_their_own_lines(tmp_path_factory, tmp_path):
    run = tiny_run(tmp_path_factory)
    image = sorted((run / "samples").glob("*.png"))[0]
    done = _kdetect("predict", run, image, "--output", tmp_path / "out.jsonl")
    assert done.returncode == 0, done.stderr
    assert _noise(done.stderr) == [], done.stderr
    assert (tmp_path / "out.jsonl").is_file()


def test_verbose_brings_tensorflow_logs_back(tmp_path_factory, tmp_path):
    run = tiny_run(tmp_path_factory)
    image = sorted((run / "samples").glob("*.png"))[0]
    done = _kdetect("--verbose", "predict", run, image, "--output", tmp_path / "out.jsonl")
    assert done.returncode == 0, done.stderr
    assert any(NATIVE_LINE.match(line) for line in done.stderr.splitlines()), done.stderr


def test_checkpoint_help_names_import(capsys):
    """``checkpoint import`` (the README's first path) shows in the group's help and the top's."""
    assert kdetect("checkpoint", "--help") == 0
    group = " ".join(capsys.readouterr().out.split())
    assert "import torchvision checkpoints" in group and "│ import " in group
    assert kdetect("--help") == 0
    assert "import torchvision checkpoints" in " ".join(capsys.readouterr().out.split())


def test_fit_on_a_dataset_does_not_warn_about_keras_shuffle():
    """``model.fit(make_dataset(...))`` as the README writes it: Keras' default shuffle=True
    would be ignored for a tf.data.Dataset, and Keras says so; kdetect's detectors default it
    to False for datasets, so the call is quiet."""
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    data = tf.data.Dataset.from_tensors(tiny_batch()).repeat(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data, epochs=1, verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)]
