"""Training runs that survive SIGKILL, SIGTERM, a full disk and a second writer.

Each training runs ``kdetect train`` in a subprocess on the tiny shapes recipe (64x64, two steps
per epoch, two epochs). Moments inside training are reached through the test-only hooks of
:func:`kdetect.engine.callbacks.lifecycle_hook` (``KDETECT_TEST_KILL_AT`` kills the process at
a named point, ``KDETECT_TEST_PAUSE_AT`` makes it wait for a file), so nothing here depends on
how fast the machine is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_support import ROOT, SHAPES, TINY, kdetect, needs_shapes, set_args, tiny_run

from kdetect.runs import inspect_run
from kdetect.runs.files import read_meta

TIMEOUT = 600  # seconds: generous, a safety net only
EPOCHS = ["train.epochs=2"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("KDETECT_DEBUG", None)
    env.update(extra)
    return env


def _train_args(run: Path, resume: bool = False) -> list[str]:
    if resume:
        return [sys.executable, "-m", "kdetect", "train", str(run), "--resume"]
    return [
        sys.executable, "-m", "kdetect", "train", str(SHAPES), "--run-dir", str(run),
        *set_args(TINY + EPOCHS),
    ]  # fmt: skip


class Training:
    """``kdetect train`` in a subprocess, its output in files (no pipe to fill up)."""

    def __init__(self, run: Path, log: Path, resume: bool = False, **env: str):
        self.log = log
        self.handle = log.open("w")
        self.proc = subprocess.Popen(
            _train_args(run, resume), env=_env(**env), stdout=self.handle, stderr=subprocess.STDOUT
        )

    def wait(self) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        finally:
            self.handle.close()
        return code, self.log.read_text()

    def wait_for(self, path: Path) -> None:
        """Until ``path`` exists; fails with the output if the process ends first."""
        deadline = time.monotonic() + TIMEOUT
        while not path.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"training ended ({self.proc.returncode}) before {path.name}:\n"
                            + self.log.read_text()[-3000:])  # fmt: skip
            assert time.monotonic() < deadline, f"no {path} after {TIMEOUT} s"
            time.sleep(0.1)


def paused_at(point: str, pause: Path) -> dict[str, str]:
    """The hook's variables: wait at ``point`` (after writing ``<pause>.reached``) for ``pause``."""
    return {"KDETECT_TEST_PAUSE_AT": point, "KDETECT_TEST_PAUSE_FILE": str(pause)}


def train(run: Path, log: Path, resume: bool = False, **env: str) -> tuple[int, str]:
    return Training(run, log, resume, **env).wait()


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def state(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "state" / "state.json").read_text())


def assert_finished(run: Path, code: int, output: str) -> None:
    assert code == 0, output[-3000:]
    assert read_meta(run)["status"] == "finished"
    assert (run / "model.keras").is_file()
    assert inspect_run(run).meta["status"] == "finished"


@pytest.fixture(autouse=True)
def _shapes():
    needs_shapes()


# --- SIGKILL ---------------------------------------------------------------------------------
@pytest.mark.parametrize("point", ["step:1", "after-checkpoint:1", "after-checkpoint:2"])
def test_killed_run_is_stale_and_resumes_from_last_complete_checkpoint(tmp_path, point):
    run = tmp_path / "run"
    code, output = train(run, tmp_path / "killed.log", KDETECT_TEST_KILL_AT=point)
    assert code == -signal.SIGKILL, output[-3000:]
    assert read_meta(run)["status"] == "running"  # what the killed process left behind
    info = inspect_run(run)
    assert info.meta["status"] == "interrupted" and info.meta["stale"] is True

    code, output = train(run, tmp_path / "resume.log", resume=True)
    if point == "step:1":  # nothing complete: resume says so, plain train starts it again
        assert code == 1 and len(errors(output)) == 1, output[-3000:]
        assert "nothing to resume" in output and "kdetect train" in output
        code, output = train(run, tmp_path / "again.log")
        assert_finished(run, code, output)
        assert state(run)["global_step"] == 4
        return
    assert_finished(run, code, output)
    if point == "after-checkpoint:1":  # no state yet: from epoch-0001.keras, optimizer and all
        assert "at epoch 2 (from epoch-0001.keras)" in output
        assert state(run)["epoch"] == 2
        assert state(run)["global_step"] == 4  # 2 restored + 2 trained: epoch 1 not retrained
    else:  # epoch-0002.keras is newer than the state of epoch 1
        assert "already trained for 2 epochs" in output


# --- SIGTERM ---------------------------------------------------------------------------------
def test_sigterm_saves_state_like_ctrl_c_and_resumes(tmp_path):
    run, pause = tmp_path / "run", tmp_path / "go"
    training = Training(run, tmp_path / "term.log", **paused_at("step:1", pause))
    training.wait_for(Path(f"{pause}.reached"))
    training.proc.send_signal(signal.SIGTERM)
    code, output = training.wait()
    assert code == 130, output[-3000:]  # as Ctrl-C
    assert "Traceback" not in output
    assert f"kdetect train {run} --resume" in output
    assert read_meta(run)["status"] == "interrupted"
    saved = state(run)
    assert (saved["epoch"], saved["step_in_epoch"], saved["interrupted"]) == (0, 1, True)

    code, output = train(run, tmp_path / "resume.log", resume=True)
    assert_finished(run, code, output)
    assert "at epoch 1, step 1" in output
    assert state(run)["global_step"] == 4


def test_ctrl_c_in_the_final_evaluation_leaves_a_finished_run(tmp_path):
    """model.keras is saved before the final evaluation: Ctrl-C there keeps the run finished and
    names the evaluate command; --resume then evaluates only, and once more does nothing."""
    run, pause = tmp_path / "run", tmp_path / "go"
    training = Training(run, tmp_path / "final.log", **paused_at("final-evaluation", pause))
    training.wait_for(Path(f"{pause}.reached"))
    training.proc.send_signal(signal.SIGINT)
    code, output = training.wait()
    assert code == 130, output[-3000:]
    assert "Traceback" not in output
    assert "final evaluation interrupted" in output and f"kdetect evaluate {run}" in output
    assert read_meta(run)["status"] == "finished"
    assert (run / "model.keras").is_file() and not (run / "metrics.json").exists()

    code, output = train(run, tmp_path / "resume.log", resume=True)
    assert_finished(run, code, output)
    assert "already trained for 2 epochs; saving and evaluating its final model" in output
    assert (run / "metrics.json").is_file()
    code, output = train(run, tmp_path / "again.log", resume=True)
    assert_finished(run, code, output)
    assert "already trained for 2 epochs; nothing left to do" in output
    assert "validation" not in output  # not evaluated a third time


# --- two writers -----------------------------------------------------------------------------
def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file with its time and size; TensorBoard's logs/ aside (its writer flushes on its
    own thread)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).parts[0] != "logs"
    }


def test_second_writer_is_refused_and_writes_nothing(tmp_path):
    run, pause = tmp_path / "run", tmp_path / "go"
    first = Training(run, tmp_path / "first.log", **paused_at("step:1", pause))
    try:
        first.wait_for(Path(f"{pause}.reached"))
        before = _listing(run)
        assert inspect_run(run).meta["status"] == "running"  # live: not taken for stale
        for resume in (False, True):
            code, output = train(run, tmp_path / f"second-{resume}.log", resume=resume)
            assert code == 1, output[-3000:]
            assert errors(output) == [
                f"error: {run}: process {first.proc.pid} is training into this run directory; "
                "wait for it to end (or stop it) or choose another --run-dir"
            ], output[-3000:]
            assert "Traceback" not in output
        assert _listing(run) == before
    finally:
        pause.touch()
    code, output = first.wait()
    assert_finished(run, code, output)


# --- full disk -------------------------------------------------------------------------------
def _mount(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True,
                   capture_output=True)  # fmt: skip


def _remount(folder: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes // 1024 + 1}k", str(folder)],
                   check=True, capture_output=True)  # fmt: skip


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of ``size`` mounted at ``folder`` (skips where mounting is not allowed)."""
    folder.mkdir()
    if shutil.which("mount") is None or sys.platform != "linux":
        pytest.skip("needs Linux mount for a small tmpfs")
    try:
        _mount(folder, size)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here (not root?): {exc.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "64m") as disk:
        yield disk


def test_full_disk_stops_with_one_line_and_resumes_after_freeing_space(tmp_path, small_disk):
    run, pause = small_disk / "run", tmp_path / "go"
    training = Training(run, tmp_path / "full.log", **paused_at("after-state:1", pause))
    training.wait_for(Path(f"{pause}.reached"))
    checkpoint = run / "checkpoints" / "epoch-0001.keras"
    # Room for the rest of epoch 1's files, not for epoch 2's checkpoint.
    used = shutil.disk_usage(small_disk).used
    _remount(small_disk, used + checkpoint.stat().st_size // 2)
    pause.touch()
    code, output = training.wait()
    assert code == 1, output[-3000:]
    assert "Traceback" not in output and "Segmentation" not in output
    (line,) = errors(output)
    assert str(run / "checkpoints" / "epoch-0002.keras") in line
    assert "not enough disk space (needs about" in line and "MB free" in line
    assert f"kdetect train {run} --resume" in line
    assert read_meta(run)["status"] == "failed"
    assert state(run)["epoch"] == 1 and checkpoint.is_file()

    _remount(small_disk, 256 << 20)  # space freed
    code, output = train(run, tmp_path / "resume.log", resume=True)
    assert_finished(run, code, output)
    assert "at epoch 2" in output
    assert state(run)["global_step"] == 4


@pytest.mark.parametrize("command", ["pack", "export"])
def test_pack_and_export_onto_a_full_disk_say_one_line(tmp_path, tmp_path_factory, capsys, command):
    run = tiny_run(tmp_path_factory)
    capsys.readouterr()  # the training's own output, when it ran just now
    with tmpfs(tmp_path / "full", "1m") as disk:
        output = disk / "out"
        if command == "pack":
            code = kdetect("checkpoint", "pack", run, "--output", output)
        else:
            code = kdetect("export", run, "--output", output)
        err = capsys.readouterr().err
        assert code == 1, err
        assert err.startswith(f"error: {output}: not enough disk space (needs about"), err
        assert len(err.strip().splitlines()) == 1, err
        assert list(disk.iterdir()) == []  # nothing partial
