"""Training state and checkpoints survive a kill: what --resume, predict and pack read is whole."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from kdetect import runs
from kdetect.engine import callbacks as cb
from kdetect.engine import train
from kdetect.plumbing.errors import CheckpointError
from kdetect.runs import inspect_run, pack, packs, write_classes
from tests.train_support import SHAPES, TINY, interrupt_after, kdetect, tiny_run


def small_manager(folder: Path):
    """A one-layer model with its optimizer built, and a CheckpointManager saving it."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    state = cb.TrainingState()
    state.set_model(model)
    manager = cb.CheckpointManager(folder, state)
    manager.set_model(model)
    return model, manager


def _half_written(self, path, *args, **kwargs):
    Path(path).write_bytes(b"half an HDF5 file")
    raise KeyboardInterrupt  # the second Ctrl-C arrives while the weights are written


def _killed(path, text):
    raise RuntimeError("SIGKILL")  # dies after the weights, before state.json


@pytest.mark.parametrize(
    "failure",
    [(cb, "write_text", _killed), (keras.Sequential, "save_weights", _half_written)],
    ids=["killed between weights and state.json", "second Ctrl-C while saving weights"],
)
def test_a_cut_short_state_save_leaves_the_previous_state(failure, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    model, manager = small_manager(folder)
    kernel = model.layers[0].kernel
    kernel.assign(np.ones((2, 1), np.float32))
    manager.save_state(epoch=1, step_in_epoch=0)
    kernel.assign(np.full((2, 1), 5.0, np.float32))
    with monkeypatch.context() as patch, pytest.raises((RuntimeError, KeyboardInterrupt)):
        patch.setattr(*failure)
        manager.save_state(epoch=2, step_in_epoch=1, interrupted=True)
    assert len(list((folder / "state").glob("*.weights.h5"))) == 2  # the new one is not trusted

    state = cb.read_state(folder)  # what --resume loads
    assert (state["epoch"], state["step_in_epoch"], state["interrupted"]) == (1, 0, False)
    model.load_weights(state["weights"])
    np.testing.assert_array_equal(kernel.numpy(), np.ones((2, 1)))

    manager.save_state(epoch=2, step_in_epoch=0)  # the next save takes over and tidies up
    assert cb.read_state(folder)["epoch"] == 2
    assert len(list((folder / "state").glob("*.weights.h5"))) == 1


def _disk_full(self, path, *args, **kwargs):
    Path(path).write_bytes(b"the first blocks")
    raise OSError(errno.ENOSPC, "No space left on device")


def _disk_full_manifest(path, text):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "target",
    [(keras.Sequential, "save_weights", _disk_full), (cb, "write_text", _disk_full_manifest)],
)
def test_a_full_disk_is_one_line_and_keeps_the_last_good_state(target, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    model, manager = small_manager(folder)
    manager.save_state(epoch=1, step_in_epoch=0)
    before = sorted(p.name for p in (folder / "state").iterdir())
    with monkeypatch.context() as patch, pytest.raises(CheckpointError) as caught:
        patch.setattr(*target)
        manager.save_state(epoch=2, step_in_epoch=0)
    message = str(caught.value)
    assert "\n" not in message and "state" in message
    assert "the disk filled up while writing it" in message and "MB free" in message
    if target[1] == "save_weights":  # no partial weights file is left behind
        assert sorted(p.name for p in (folder / "state").iterdir()) == before
    assert cb.read_state(folder)["epoch"] == 1
    with monkeypatch.context() as patch, pytest.raises(CheckpointError, match="best.keras"):
        patch.setattr(keras.Sequential, "save", _disk_full)
        runs.save_keras(model, folder / "best.keras")
    assert not (folder / "best.keras").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize(
    "layout, message",
    [
        ("legacy", None),  # written before state.json named its weights file
        ("truncated json", "state.json: corrupt training state"),
        ("weights missing", "state.json: names state-1.weights.h5, which is missing"),
    ],
)
def test_read_state_layouts(layout, message, tmp_path):
    model, _ = small_manager(tmp_path / "checkpoints")
    state_dir = tmp_path / "checkpoints" / "state"
    state_dir.mkdir()
    model.save_weights(state_dir / "state.weights.h5")
    text = json.dumps({"epoch": 3, "step_in_epoch": 0})
    if layout == "truncated json":
        text = text[:-4]
    if layout == "weights missing":
        text = json.dumps({"epoch": 3, "weights_file": "state-1.weights.h5"})
    (state_dir / "state.json").write_text(text)
    if message is None:
        assert cb.read_state(tmp_path / "checkpoints")["weights"].endswith("state.weights.h5")
        return
    with pytest.raises(CheckpointError, match=message) as info:
        cb.read_state(tmp_path / "checkpoints")
    assert "\n" not in str(info.value)


def test_double_ctrl_c_leaves_a_resumable_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    overrides = TINY + [
        "train.epochs=2",
        "eval.every=0",
        "eval.samples=0",
        "data.val_split=null",
        "train.checkpoint.best=loss",
    ]
    write_text = cb.write_text

    def second_ctrl_c(path, text):
        if Path(path).name == "state.json" and json.loads(text)["interrupted"]:
            raise KeyboardInterrupt
        return write_text(path, text)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(cb, "write_text", second_ctrl_c)
        train(SHAPES, run_dir=run, overrides=overrides, callbacks=[interrupt_after(3)])
    state = cb.read_state(run / "checkpoints")  # the end of epoch 1, not the half-saved step 3
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 2)

    assert kdetect("train", run, "--resume") == 0
    state = cb.read_state(run / "checkpoints")
    assert (state["epoch"], state["global_step"]) == (2, 4)
    with (run / "history.csv").open() as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]


def _truncated(good: Path, bad: Path) -> None:
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def _no_config(good: Path, bad: Path) -> None:
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("model.weights.h5", b"")


BROKEN = {  # what a killed or foreign writer leaves: (file name, how, the reported reason)
    "truncated epoch": ("epoch-0002.keras", _truncated, "not a valid .keras zip"),
    "garbage epoch": ("epoch-0002.keras", lambda g, b: b.write_bytes(b"junk"), "not a valid"),
    "zip without config": ("step-0000004.keras", _no_config, "no config.json inside"),
    "leftover temporary": (
        ".tmp-4242-abcdef.epoch-0002.keras",
        lambda g, b: shutil.copyfile(g, b),
        "leftover temporary file of an unfinished save",
    ),
    "truncated model.keras": ("../model.keras", _truncated, "not a valid .keras zip"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_incomplete_checkpoints_are_skipped_and_reported(
    case, tmp_path_factory, tmp_path, caplog, capsys
):
    name, make, reason = BROKEN[case]
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run(tmp_path_factory), run)
    (run / "model.keras").unlink()
    good = run / "checkpoints" / "epoch-0001.keras"
    bad = Path(os.path.normpath(run / "checkpoints" / name))
    make(good, bad)
    os.utime(bad, (good.stat().st_mtime + 60,) * 2)  # newer than the good one

    with caplog.at_level(logging.WARNING, logger="kdetect.runs.checkpoints"):
        assert inspect_run(run).model_path == good
        assert kdetect("checkpoint", "pack", run, "-o", tmp_path / "tiny.kdet") == 0
        assert kdetect("checkpoint", "list", run.parent) == 0
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings, "each skipped file is reported"
    for warning in warnings:
        assert warning.startswith(f"warning: {bad}: skipped (") and reason in warning
    with zipfile.ZipFile(tmp_path / "tiny.kdet") as zf:
        assert json.loads(zf.read("kdetect.json"))["model_file"] == "checkpoints/epoch-0001.keras"

    sample = sorted((run / "samples").glob("*.png"))[0]
    capsys.readouterr()
    assert kdetect("predict", bad, sample) == 1  # asked for this very file: a clear error
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"error: {bad}: cannot load model (") and reason in error
    if case == "truncated model.keras":  # predict on the run falls back to the checkpoint
        assert kdetect("predict", run, sample, "--min-score", "0") == 0


def _declare_size(packed: Path, member: str, size: int) -> None:
    """Make the zip lie: ``member``'s uncompressed size is declared as ``size`` in both headers."""
    data = bytearray(packed.read_bytes())
    with zipfile.ZipFile(packed) as zf:
        info, start = zf.getinfo(member), zf.start_dir
    data[info.header_offset + 22 : info.header_offset + 26] = size.to_bytes(4, "little")
    at = start
    while data[at : at + 4] == b"PK\x01\x02":
        name_len, extra, comment = (int.from_bytes(data[at + k : at + k + 2], "little")
                                    for k in (28, 30, 32))  # fmt: skip
        if data[at + 46 : at + 46 + name_len].decode() == member:
            data[at + 24 : at + 28] = size.to_bytes(4, "little")
        at += 46 + name_len + extra + comment
    packed.write_bytes(bytes(data))


def _add_member(name: str, size: int, compression: int = zipfile.ZIP_DEFLATED):
    def change(packed: Path) -> None:
        with zipfile.ZipFile(packed, "a", compression) as zf:
            zf.writestr(name, b"\0" * size)

    return change


def _write_member(packed: Path, name: str, text: str) -> None:
    with zipfile.ZipFile(packed, "a") as zf:
        zf.writestr(name, text)


# Each level holds the one above ten times: 10**8 values once expanded.
ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
    + "name: *h\n"
)

# case -> (how the packed run is spoiled, limit overrides, the message after "PATH: " (a regex))
ZIP_BOMBS = {
    "over the total limit": (
        _add_member("history.csv", 3 * 2**20, zipfile.ZIP_STORED),
        {"MAX_PACK_BYTES": 2**20},
        r"would expand to 3\.0 MiB, over the limit of 1 MiB",
    ),
    "member ratio": (
        _add_member("history.csv", 16 * 2**20),
        {},
        r"history\.csv would expand 10\d\d times \(limit 100\); refusing a possible zip bomb",
    ),
    "recipe alias bomb": (
        lambda packed: _write_member(packed, "recipe.yaml", ALIAS_BOMB),
        {},
        r"recipe\.yaml: YAML anchors/aliases expand to more than 100000 values \(or refer to "
        r"themselves\); write the values out",
    ),
    "declared size lies": (
        lambda packed: _declare_size(packed, "model.keras", 10),
        {},
        r"corrupt packed run \(Bad CRC-32 for file 'model\.keras'\)",
    ),
}


@pytest.mark.parametrize("command", ["checkpoint unpack {packed} {dest}", "predict {packed} {img}"])
@pytest.mark.parametrize("case", ZIP_BOMBS, ids=list(ZIP_BOMBS))
def test_packed_runs_are_expanded_within_limits(case, command, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_classes(run / "classes.json", ["circle"])
    with zipfile.ZipFile(run / "model.keras", "w") as zf:
        zf.writestr("config.json", "{}" + " " * 100)
    packed = pack(run, tmp_path / "run.kdet")
    spoil, limits, message = ZIP_BOMBS[case]
    spoil(packed)
    for name, value in limits.items():
        monkeypatch.setattr(packs, name, value)
    img = tmp_path / "a.png"
    img.write_bytes(b"")
    dest = tmp_path / "unpacked"
    before = sorted(tmp_path.rglob("*"))
    args = command.format(packed=packed, dest=dest, img=img).split()
    assert kdetect(*args) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(f"error: {re.escape(str(packed))}: {message}", line), line
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted, nothing left behind


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("given", ["run", "keras", "packed"])
def test_non_finite_weights_are_refused_at_load(value, given, tmp_path_factory, tmp_path, capsys):
    """A model whose weights hold NaN or infinity predicts nothing: loading it is one
    CheckpointError line naming the file and the first bad variable."""
    run = tmp_path / "bad"
    shutil.copytree(tiny_run(tmp_path_factory), run)
    model, _ = runs.load_model(run)
    variable = model.box_predictor.cls_score.kernel
    poisoned = variable.numpy()
    poisoned[0, 0] = value
    variable.assign(poisoned)
    runs.save_keras(model, run / "model.keras")
    shown = {
        "run": (run, f"{run / 'model.keras'}: "),
        "keras": (run / "model.keras", f"{run / 'model.keras'}: "),
        "packed": (pack(run, tmp_path / "bad.kdet"), f"{tmp_path / 'bad.kdet'} (model.keras"),
    }
    target, names_file = shown[given]
    with pytest.raises(CheckpointError) as raised:
        runs.load_model(target)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(names_file), message
    assert f"variable {variable.path} holds NaN or infinite values" in message

    sample = sorted((run / "samples").glob("*.png"))[0]
    capsys.readouterr()
    assert kdetect("predict", target, sample) == 1
    assert capsys.readouterr().err.strip() == f"error: {message}"
