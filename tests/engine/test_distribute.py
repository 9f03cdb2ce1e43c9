"""Training on several devices and workers with tf.distribute (train.distribute).

* ``mirrored`` on two logical CPU devices gives the same weights as one device on the same global
  batch. Each replica sees half of the batch and the optimizer sums the replicas' gradients, so
  the result only matches if nothing depends on how the batch is split: the RPN and RoI samplers
  draw random numbers of the shape of their (per-replica) input, so here they are made
  deterministic by asking for more samples than there are candidates with a positive fraction of
  1 (every anchor and every proposal is used, in index order), batch norm is frozen (per-replica
  batch statistics would differ from the global batch's) and flips are off. The losses are means
  over a fixed number of samples per image, so the mean over replicas equals the global mean.
* ``multi_worker`` with two worker processes on 127.0.0.1 (TF_CONFIG): both exit 0, the chief's
  run directory (checkpoints, model.keras) loads, the other worker writes nothing there; and
  killing one worker makes the other fail with a clear message within a timeout.

Logical devices must be configured before TensorFlow initialises, and a multi-worker strategy
owns its process: each case runs in fresh Python processes. Set KDETECT_SKIP_DISTRIBUTED=1 to
skip these tests (for example on a machine where local ports are not available).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("KDETECT_SKIP_DISTRIBUTED") == "1", reason="KDETECT_SKIP_DISTRIBUTED=1"
)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "shapes.yaml"

# A few deterministic steps of the shapes recipe, 64x64 images (1023 anchors, 50 proposals).
COMMON = [
    "model.image_size=[64,64]",
    "data.batch_size=4",
    "data.max_boxes=4",
    "data.shapes.num_train=16",
    "data.val_split=null",
    "data.augment.horizontal_flip=0.0",
    "data.shuffle=false",
    "model.frozen_batch_norm=true",
    "model.anchor_sizes=[[8],[16],[32],[64],[128]]",
    "model.rpn.pre_nms_top_n_train=100",
    "model.rpn.post_nms_top_n_train=50",
    "model.rpn.batch_size_per_image=1024",
    "model.rpn.positive_fraction=1.0",
    "model.box.batch_size_per_image=64",
    "model.box.positive_fraction=1.0",
    "train.epochs=1",
    "train.steps_per_epoch=3",
    "train.optimizer.name=sgd",
    "train.optimizer.lr=0.02",
    "train.optimizer.momentum=0.9",
    "train.optimizer.weight_decay=0.0",
    "train.optimizer.global_clipnorm=null",
    "train.schedule.name=constant",
    "train.schedule.warmup_steps=0",
    "train.checkpoint.best=none",
    "train.tensorboard=false",
    "eval.every=0",
    "eval.samples=0",
]

MIRRORED_SCRIPT = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from kdetect.engine.training import train

recipe, out, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
replicas = {}

class Replicas(keras.callbacks.Callback):
    def __init__(self, key):
        super().__init__()
        self.key = key
    def on_train_begin(self, logs=None):
        replicas[self.key] = self.model.distribute_strategy.num_replicas_in_sync

weights = {}
for strategy in ("none", "mirrored"):
    run = train(recipe, run_dir=f"{out}/{strategy}", callbacks=[Replicas(strategy)],
                overrides=overrides + [f"train.distribute={strategy}"])
    model = keras.saving.load_model(f"{run}/model.keras")
    weights[strategy] = [np.asarray(v) for v in model.weights]
diffs = [float(np.max(np.abs(a - b))) for a, b in zip(weights["none"], weights["mirrored"])]
print(json.dumps({"replicas": replicas, "max_diff": max(diffs), "count": len(diffs)}))
"""


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "160"})
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def test_mirrored_two_cpu_replicas_match_one_device(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(RECIPE), str(tmp_path), json.dumps(COMMON)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == {"none": 1, "mirrored": 2}
    assert result["count"] > 20
    # Same global batch, same data, deterministic sampling: float reduction order only.
    assert result["max_diff"] < 1e-4, result


def _launch_workers(
    run_dir: Path, overrides: list[str], extra_env: dict | None = None, resume: bool = False
):
    """Start two workers on fresh local ports (with ``resume``: ``kdetect train RUN --resume``)."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        args = [sys.executable, "-m", "kdetect", "train"]
        if resume:
            args += [str(run_dir), "--resume"]
        else:
            args += [str(RECIPE), "--run-dir", str(run_dir)]
            overrides = COMMON + ["train.distribute=multi_worker"] + overrides
        for item in overrides:
            args += ["--set", item]
        log = open(run_dir.parent / f"worker{index}.log", "a")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(TF_CONFIG=tf_config, **(extra_env or {})),
                cwd=ROOT,
            )
        )
    return procs


def _log(run_dir: Path, index: int) -> str:
    return (run_dir.parent / f"worker{index}.log").read_text(errors="replace")


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _wait(procs, run_dir: Path) -> None:
    try:
        codes = [p.wait(timeout=1800) for p in procs]
    finally:
        _stop(procs)
    assert codes == [0, 0], _log(run_dir, 0)[-3000:] + "\n---\n" + _log(run_dir, 1)[-3000:]


def test_multi_worker_two_processes_train_and_the_chief_checkpoint_loads(tmp_path):
    """Train, check the chief's run, then restart both workers with --resume for one more epoch."""
    run_dir = tmp_path / "run"
    _wait(_launch_workers(run_dir, []), run_dir)
    # The chief (worker 0) wrote the run; worker 1 wrote into a scratch folder it removed.
    assert (run_dir / "checkpoints" / "state" / "state.json").is_file()
    state = json.loads((run_dir / "checkpoints" / "state" / "state.json").read_text())
    assert state["epoch"] == 1
    from kdetect import runs

    model, _ = runs.load_model(run_dir)
    assert model.num_classes == 3
    import numpy as np

    out = model.predict(np.zeros((1, 64, 64, 3), "uint8"), verbose=0)
    assert out["boxes"].shape[0] == 1
    first_weights = [np.asarray(w) for w in model.weights]

    # Restart: both workers resume from the chief's state and train epoch 2 (steps 4-6).
    _wait(_launch_workers(run_dir, ["train.epochs=2"], resume=True), run_dir)
    state = json.loads((run_dir / "checkpoints" / "state" / "state.json").read_text())
    # global_step is the restored optimizer's iteration count: 3 steps, then 3 more.
    assert (state["epoch"], state["global_step"]) == (2, 6), state
    for index in range(2):  # the other worker resumes from the chief's state as well
        assert "at epoch 2" in " ".join(_log(run_dir, index).split()), _log(run_dir, index)[-2000:]
    resumed, _ = runs.load_model(run_dir)
    moved = [
        float(np.max(np.abs(np.asarray(w) - v))) for w, v in zip(resumed.weights, first_weights)
    ]
    assert max(moved) > 0  # epoch 2 trained on, from epoch 1's weights


def test_multi_worker_lost_peer_fails_clearly_instead_of_hanging(tmp_path):
    run_dir = tmp_path / "run"
    procs = _launch_workers(
        run_dir,
        ["train.steps_per_epoch=100000", "train.checkpoint.every_steps=2"],
        extra_env={"KDETECT_HEALTH_CHECK_INTERVAL": "2"},
    )
    try:
        deadline = time.monotonic() + 1200
        checkpoints = run_dir / "checkpoints"
        while not list(checkpoints.glob("step-*.keras")) if checkpoints.is_dir() else True:
            assert all(p.poll() is None for p in procs), _log(run_dir, 0)[-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGKILL)
        start = time.monotonic()
        code = procs[0].wait(timeout=900)
        elapsed = time.monotonic() - start
    finally:
        _stop(procs)
    log = _log(run_dir, 0)
    assert code != 0
    assert "lost contact with another worker" in log, log[-3000:]
    assert "--resume" in log
    assert elapsed < 900  # a hang is forever; a loaded machine is slow


def test_tpu_without_a_tpu_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    from tests.train_support import TINY, kdetect, set_args

    monkeypatch.delenv("KDETECT_TPU", raising=False)
    run_dir = tmp_path / "run"
    code = kdetect(
        "train", RECIPE, "--run-dir", run_dir, *set_args(TINY + ["train.distribute=tpu"])
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1
    assert "train.distribute: tpu: no TPU found" in err and "KDETECT_TPU" in err, err
    assert "Traceback" not in err
