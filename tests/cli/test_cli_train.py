"""``kdetect train`` end to end on the shapes recipe: run directory, resume, init_from, errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from kdetect.config import load
from kdetect.engine import train
from kdetect.engine.callbacks import read_state
from tests.data_support import write_voc
from tests.train_support import (
    BCCD,
    SHAPES,
    TINY,
    has_bccd,
    interrupt_after,
    kdetect,
    set_args,
    tiny_run,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def test_train_writes_the_run_directory(run):
    for name in ("recipe.yaml", "classes.json", "model.keras", "history.csv", "kdetect.json"):
        assert (run / name).is_file(), name
    for name in ("results.png", "labels.png"):  # the pictures every run gets
        with Image.open(run / name) as image:
            assert image.format == "PNG" and min(image.size) >= 600, name
    # the first training batch as augmented, enlarged 5x (64 px images) so labels read
    with Image.open(run / "train_batch.jpg") as image:
        assert image.format == "JPEG" and image.size == (2 * 320 + 2, 320)  # batch of 2
    assert (run / "logs").is_dir()
    assert (run / "checkpoints" / "epoch-0001.keras").is_file()
    assert (run / "checkpoints" / "best.keras").is_file()
    assert read_state(run / "checkpoints")["epoch"] == 1
    assert json.loads((run / "classes.json").read_text()) == {
        "classes": ["circle", "rectangle", "triangle"]
    }
    assert len(list((run / "samples").glob("*.png"))) == 3
    resolved = load(run / "recipe.yaml")
    assert resolved.model.image_size == [64, 64]  # overrides are part of the saved recipe
    assert resolved.train.steps_per_epoch == 2
    with (run / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    for key in (
        "loss",
        "rpn_cls_loss",
        "rpn_box_loss",
        "rcnn_cls_loss",
        "rcnn_box_loss",
        "val_loss",
        "lr",
        "val_mAP",
    ):
        assert np.isfinite(float(rows[0][key])), key
    meta = json.loads((run / "kdetect.json").read_text())
    assert meta["status"] == "finished"


def test_run_ground_truth_regenerates_the_validation_split(run):
    from kdetect.engine.builders import run_ground_truth

    truth = run_ground_truth(run)
    assert truth.classes == ["circle", "rectangle", "triangle"]
    assert len(truth) == 4  # data.shapes.num_val of the run's recipe
    assert sorted(p.stem for p in (run / "samples").glob("*.png")) == sorted(
        r.filename.rsplit(".", 1)[0] for r in truth.records[:3]
    )


def test_saved_model_loads_with_plain_keras(run):
    import kdetect.models.faster_rcnn  # noqa: F401  (registers the model class)

    model = keras.saving.load_model(run / "model.keras")
    out = model.predict(np.zeros((1, 50, 70, 3), np.uint8), verbose=0)
    assert out["boxes"].shape[-1] == 4 and out["labels"].shape[0] == 1


def test_interrupt_then_resume_continues_where_it_stopped(tmp_path):
    pytest.importorskip("kdetect.data.shapes")
    run = tmp_path / "resume"
    overrides = TINY + [
        "train.epochs=2",
        "eval.every=0",
        "eval.samples=0",
        "data.val_split=null",
        "train.checkpoint.best=loss",
    ]
    with pytest.raises(KeyboardInterrupt):
        train(SHAPES, run_dir=run, overrides=overrides, callbacks=[interrupt_after(3)])
    state = read_state(run / "checkpoints")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 3)
    assert state["interrupted"]
    assert not (run / "model.keras").exists()
    assert json.loads((run / "kdetect.json").read_text())["status"] == "interrupted"

    # a second `train` into the same directory without --resume is refused
    assert kdetect("train", SHAPES, "--run-dir", run) == 1

    assert kdetect("train", run, "--resume") == 0
    state = read_state(run / "checkpoints")
    assert (state["epoch"], state["global_step"]) == (2, 4)  # one step left, not a new epoch
    with (run / "history.csv").open() as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    assert (run / "model.keras").is_file()


def test_init_from_a_run_with_another_class_count(run, tmp_path):
    from kdetect.runs import load_model

    new = tmp_path / "two-classes"
    overrides = TINY + [
        f"train.init_from={run}",
        "data.classes=[circle, triangle]",
        "train.steps_per_epoch=1",
        "data.val_split=null",
        "train.checkpoint.best=none",
        "eval.every=0",
        "train.optimizer.lr=1e-12",
        "train.schedule.name=constant",
        "train.schedule.warmup_steps=0",
    ]
    assert kdetect("train", SHAPES, "--run-dir", new, *set_args(overrides)) == 0
    source, _ = load_model(run)
    target, classes = load_model(new)
    assert classes == ["circle", "triangle"]

    def by_path(model):
        return {v.path.removeprefix(model.name + "/"): v.numpy() for v in model.weights}

    src, dst = by_path(source), by_path(target)
    same_shape = [p for p in dst if p in src and src[p].shape == dst[p].shape]
    assert len(same_shape) > 0.9 * len(dst)
    # with lr ~ 0 every copied kernel still equals the source's
    for path in same_shape:
        if path.endswith("kernel"):
            np.testing.assert_allclose(dst[path], src[path], atol=1e-5, err_msg=path)
    # the class-dependent predictor has new shapes (3 -> 2 classes)
    predictor = [p for p in dst if "box_predictor" in p]
    assert predictor and any(src[p].shape != dst[p].shape for p in predictor)


def test_a_run_stores_absolute_paths_and_works_from_any_folder(run, tmp_path, monkeypatch):
    """data.root and train.init_from typed relative to the folder of ``kdetect train`` are
    written absolute into the run's recipe.yaml: evaluate and predict work from elsewhere."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_voc(work / "voc")
    monkeypatch.chdir(work)
    voc = [
        "data.format=voc",
        "data.root=voc",
        "data.val_split=null",
        "train.checkpoint.best=none",
        "eval.every=0",
        "eval.samples=0",
        f"train.init_from={os.path.relpath(run, work)}",
    ]
    assert kdetect("train", SHAPES, "--run-dir", "new", *set_args(TINY + voc)) == 0
    stored = load(work / "new", check_paths=False)
    assert stored.data.root == str(work / "voc")
    assert Path(stored.train.init_from).is_absolute()
    assert Path(stored.train.init_from).resolve() == run.resolve()
    monkeypatch.chdir(elsewhere)
    new = work / "new"
    assert kdetect("evaluate", new, "--split", "train", "--output", "metrics.json") == 0
    assert json.loads((elsewhere / "metrics.json").read_text())
    assert kdetect("predict", new, work / "voc" / "JPEGImages" / "a.jpg") == 0


def test_bad_recipe_key_exits_1_with_one_line(capsys):
    assert kdetect("train", SHAPES, "--set", "train.epoch=3") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train.epoch: unknown key (did you mean train.epochs?)" in err


def test_bad_paths_exit_1(tmp_path, capsys):
    assert kdetect("train", tmp_path / "missing.yaml") == 1
    assert "recipe file not found" in capsys.readouterr().err
    assert kdetect("train", SHAPES, "--set", f"train.init_from={tmp_path / 'nope'}") == 1
    assert "train.init_from: path not found" in capsys.readouterr().err
    assert kdetect("train", tmp_path, "--resume") == 1
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.skipif(not has_bccd(), reason="../shared/data/bccd not available")
def test_bccd_recipe_trains_a_step(tmp_path):
    run = tmp_path / "bccd"
    overrides = [o for o in TINY if not o.startswith(("data.shapes", "model.image_size"))] + [
        f"data.root={BCCD}",
        "model.backbone=tiny",
        "model.backbone_weights=null",
        "model.freeze=null",
        "model.image_size=[96,128]",
        "data.max_boxes=40",
        "train.steps_per_epoch=1",
        "data.val_split=null",
        "train.checkpoint.best=none",
        "eval.every=0",
        "eval.samples=0",
    ]
    assert (
        kdetect("train", SHAPES.parent / "bccd.yaml", "--run-dir", run, *set_args(overrides)) == 0
    )
    assert json.loads((run / "classes.json").read_text())["classes"] == ["Platelets", "RBC", "WBC"]
    assert (run / "model.keras").is_file()


def test_first_class_flags_set_the_recipe_and_python_trains_in_one_line(tmp_path, monkeypatch):
    """``--epochs --batch-size --image-size --device`` beside ``--set`` (as Ultralytics' train
    takes them), and ``kdetect.train(...)`` from Python."""
    import kdetect as package

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    run = tmp_path / "flags"
    args = ["train", SHAPES, "--run-dir", run, *set_args(TINY)]
    args += ["--epochs", "2", "--batch-size", "4", "--image-size", "96", "--device", "cpu"]
    assert kdetect(*args) == 0
    recipe = load(run)
    assert recipe.train.epochs == 2 and recipe.data.batch_size == 4
    assert list(recipe.model.image_size) == [96, 96]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert kdetect("train", SHAPES, "--image-size", "96,abc") == 2

    python_run = package.train(SHAPES, run_dir=tmp_path / "python", overrides=TINY)
    assert (python_run / "model.keras").is_file()


def test_a_trainer_subclass_changes_its_steps(tmp_path):
    """``train(..., trainer=...)``: the Trainer's hooks are the steps a variant changes (its
    data, model, callbacks and report); a class that is not a Trainer is refused."""
    from kdetect.engine import Trainer

    seen: list[str] = []

    class Counting(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append("step")

    class Custom(Trainer):
        def build_data(self):
            seen.append("data")
            return super().build_data()

        def build_model(self, num_classes, steps_per_epoch):
            seen.append(f"model {num_classes}")
            return super().build_model(num_classes, steps_per_epoch)

        def build_callbacks(self, samples, fit_data, start):
            run = super().build_callbacks(samples, fit_data, start)
            run.callbacks.append(Counting())
            return run

        def report(self, model, detections=None):
            seen.append("report")

    run = train(SHAPES, run_dir=tmp_path / "run", overrides=TINY, trainer=Custom)
    assert seen == ["data", "model 3", "step", "step", "report"]
    assert (run / "model.keras").is_file() and not (run / "metrics.json").exists()
    with pytest.raises(TypeError, match="subclass of Trainer"):
        train(SHAPES, run_dir=tmp_path / "other", overrides=TINY, trainer=dict)
    assert not (tmp_path / "other").exists()
