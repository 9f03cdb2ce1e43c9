"""Bad input gets one clear line naming the file or key, exit 1, and leaves nothing behind.

Every command that reads images refuses the same bad files (decompression bombs, slivers,
truncated or garbage files) with the same words; recipes that are empty, binary, repeat a key or
hold non-finite numbers are refused before anything is written; a run that fails after its
directory exists is marked failed, never left `running`. Paths are printed as given: rich markup
must not eat the ``[v2]`` of ``set[v2]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from kdetect.apps import predict as predict_api
from kdetect.config import loader
from kdetect.config.schema import Recipe
from kdetect.engine import evaluate_run, fitting, training
from kdetect.engine.training import default_run_dir, safe_run_name
from kdetect.plumbing.errors import DataError
from tests.data_support import _jpeg, png_header_only, write_voc
from tests.train_support import SHAPES, TINY, kdetect, set_args, tiny_run


def _sliver(width: int, height: int):
    def write(path: Path) -> None:
        Image.new("RGB", (width, height), "white").save(path, format="PNG")

    return write


def _truncated(path: Path) -> None:
    _jpeg(path, 64, 48)
    path.write_bytes(path.read_bytes()[:300])


# kind -> (writes the bad image at a path, what the error line says after "PATH: ")
BAD_IMAGES = {
    "decompression bomb": (
        lambda path: path.write_bytes(png_header_only(20_000, 20_000)),
        "image has 400000000 pixels, over the limit of 40000000 pixels",
    ),
    "1x5000": (_sliver(1, 5000), "1x5000 image is too small; each side must be at least 8 pixels"),
    "10x300": (
        _sliver(10, 300),
        "10x300 image is too elongated; the long side may be at most 20 times the short side",
    ),
    "truncated": (_truncated, "corrupt or truncated image ("),
    "garbage": (
        lambda path: path.write_bytes(b"not an image " * 50),
        "not a readable image (unknown or corrupt format)",
    ),
}

# Shapes-trained tiny model on a VOC copy of three images (one of them bad) of its classes.
DATA = {
    "a.jpg": (64, 48, [("circle", 1, 2, 30, 40, 0)]),
    "b.jpg": (40, 50, [("triangle", 0, 0, 20, 25, 0)]),
    "c.jpg": (32, 32, [("circle", 2, 2, 20, 20, 0)]),
}
VOC_TRAIN = [
    "data.format=voc",
    "data.val_split=null",
    "train.checkpoint.best=none",
    "eval.every=0",
    "eval.samples=0",
]
COMMANDS = {
    "dataset transform": "dataset transform {root} --type voc --output {out}",
    "dataset inspect": "dataset inspect {root}",
    "dataset convert": "dataset convert {root} --type voc --to yolo --output {out}",
    "train": "train {shapes} --run-dir {out} --set data.root={root}",
    "predict": "predict {run} {root}/JPEGImages",
    "evaluate": "evaluate {run} --data {root} --type voc --split train --output {out}",
}


@pytest.mark.parametrize("kind", BAD_IMAGES)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_image_is_one_line_in_every_command(
    command, kind, tmp_path_factory, tmp_path, capsys
):
    root = write_voc(tmp_path / "set[v2]", DATA)  # markup must not eat "[v2]"
    bad = root / "JPEGImages" / "c.jpg"
    write, reason = BAD_IMAGES[kind]
    write(bad)
    out = tmp_path / "out"
    run = tiny_run(tmp_path_factory) if command in ("predict", "evaluate") else None
    args = COMMANDS[command].format(root=root, out=out, run=run, shapes=SHAPES).split()
    if command == "train":
        args += set_args(TINY + VOC_TRAIN)
    capsys.readouterr()
    assert kdetect(*args) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith(f"error: {bad}: {reason}"), lines
    if command == "predict":  # the others are predicted, then the count of failures
        assert [json.loads(line)["file"] for line in captured.out.splitlines()] == [
            str(root / "JPEGImages" / name) for name in ("a.jpg", "b.jpg")
        ]
        assert lines[1].startswith("predicted 2 image(s) in ")  # the closing summary
        assert lines[2:] == ["error: 1 of 3 input(s) could not be read"]
    else:
        assert lines[1:] == ["error: 1 of 3 images cannot be used"]
    assert not out.exists()  # no TFRecords, no run directory, no metrics


def test_inspect_reports_every_bad_image_at_once(tmp_path, capsys):
    root = write_voc(tmp_path / "voc", DATA)
    BAD_IMAGES["truncated"][0](root / "JPEGImages" / "a.jpg")
    BAD_IMAGES["garbage"][0](root / "JPEGImages" / "c.jpg")
    drawn = tmp_path / "drawn"
    assert kdetect("dataset", "inspect", root, "--show", 3, "--output", drawn) == 1
    captured = capsys.readouterr()
    assert "images" in captured.out  # the counts are still printed
    lines = captured.err.strip().splitlines()
    assert [line.split(": ", 2)[1] for line in lines[:2]] == [
        str(root / "JPEGImages" / "a.jpg"),
        str(root / "JPEGImages" / "c.jpg"),
    ]
    assert lines[2:] == ["error: 2 of 3 images cannot be used"]
    assert [p.name for p in drawn.iterdir()] == ["0000_b.jpg"]  # only the good one is drawn


# name -> (recipe file content, the error after "PATH: " or the key's message)
RECIPES = {
    "empty": (b"", "{path}: the recipe is empty; see recipes/shapes.yaml for one to start from"),
    "comments only": (
        b"# to do\n\n",
        "{path}: the recipe is empty; see recipes/shapes.yaml for one to start from",
    ),
    "binary": (
        b"\x89PNG\r\n\x1a\n\x00\xff\xfe",
        "{path}: cannot read the recipe (byte 0 is not UTF-8 text)",
    ),
    "duplicate key": (
        b"name: a\ntrain:\n  epochs: 1\nname: b\n",
        "{path}: line 4: duplicate key name (first given on line 1)",
    ),
    "duplicate nested key": (
        b"train:\n  optimizer:\n    lr: 0.1\n    lr: 0.2\n",
        "{path}: line 4: duplicate key train.optimizer.lr (first given on line 3)",
    ),
    "lr .inf": (
        b"train:\n  optimizer:\n    lr: .inf\n",
        "train.optimizer.lr: expected a finite number, got inf",
    ),
    "lr .nan": (
        b"train:\n  optimizer:\n    lr: .nan\n",
        "train.optimizer.lr: expected a finite number, got nan",
    ),
    "empty aspect_ratios": (
        b"model:\n  aspect_ratios: []\n",
        "model.aspect_ratios: needs at least 1 value(s), got 0",
    ),
    "wrong anchor levels": (
        b"model:\n  anchor_sizes: [[32], [64]]\n",
        "model.anchor_sizes: needs 5 list(s), one per RPN level with FPN, got 2",
    ),
    "data.root is a file": (
        b"data:\n  format: voc\n  root: {path}\n",
        "data.root: {path} is a file; data.format voc needs the dataset folder",
    ),
    "alias bomb": (
        b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + b"".join(
            b"%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n"
            % ((c, c) + (c - 1,) * 10)
            for c in b"bcdefgh"
        )
        + b"name: *h\n",
        "{path}: YAML anchors/aliases expand to more than 100000 values (or refer to "
        "themselves); write the values out",
    ),
    "init_from a YAML file": (
        b"train:\n  init_from: {path}\n",
        "train.init_from: {path}: not a run directory, .keras or .kdet file",
    ),
}


@pytest.mark.parametrize("case", RECIPES, ids=list(RECIPES))
def test_bad_recipes_are_refused_before_a_run_exists(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "set[v2]" / "recipe.yaml"
    path.parent.mkdir()
    content, message = RECIPES[case]
    path.write_bytes(content.replace(b"{path}", str(path).encode()))
    assert kdetect("train", path) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["error: " + message.format(path=path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set[v2]"]  # no runs/


def _fail_in_build_model(exc: BaseException):
    def build_model(recipe, num_classes):
        raise exc

    return build_model


@pytest.mark.parametrize(
    "exc, code",
    [
        (DataError("model: cannot be built"), 1),
        (RuntimeError("a bug"), None),
        (KeyboardInterrupt(), 130),
    ],
    ids=["expected error", "bug", "ctrl-c"],
)
def test_a_run_that_fails_before_its_first_step_leaves_no_folder(
    exc, code, tmp_path, monkeypatch, capsys
):
    """E.g. backbone weights that cannot be downloaded: the run directory had been written
    (recipe, samples, labels.png) but nothing was trained, so it is removed."""
    run = tmp_path / "run"
    args = ["train", SHAPES, "--run-dir", run, *set_args(TINY)]
    with monkeypatch.context() as patch:
        patch.setattr(fitting, "build_model", _fail_in_build_model(exc))
        if code is None:
            with pytest.raises(RuntimeError, match="a bug"):
                kdetect(*args)
        else:
            assert kdetect(*args) == code
        assert not run.exists()
        # so the same command may run again (not "already exists")
        capsys.readouterr()
        patch.setattr(fitting, "build_model", _fail_in_build_model(DataError("again")))
        assert kdetect(*args) == 1
        assert capsys.readouterr().err.strip() == "error: again"
    assert not run.exists()
    # an empty folder given as --run-dir stays, holding only the run's (released) lock file
    run.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(fitting, "build_model", _fail_in_build_model(DataError("again")))
        assert kdetect(*args) == 1
    assert [p.name for p in run.iterdir()] == [".lock"]
    # --resume says there is nothing to resume, in one line
    assert kdetect("train", run, "--resume") == 1
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, safe",
    [("../../x", "x"), ("a/b", "a_b"), ("..", "run"), ("/etc/passwd", "etc_passwd"),
     ("my run: v2", "my_run_v2"), ("bccd-frcnn_1.5", "bccd-frcnn_1.5")],
)  # fmt: skip
def test_run_names_stay_inside_runs(name, safe, tmp_path):
    assert safe_run_name(name) == safe
    recipe = Recipe(name=name)
    path = default_run_dir(recipe, tmp_path / "runs")
    assert path.parent == tmp_path / "runs" and path.name.startswith(f"{safe}-")


def test_training_on_a_dataset_without_boxes_names_the_dataset(tmp_path, capsys):
    root = write_voc(tmp_path / "voc", {name: (w, h, []) for name, (w, h, _) in DATA.items()})
    run = tmp_path / "run"
    args = ["train", SHAPES, "--run-dir", run, *set_args(TINY + VOC_TRAIN + [f"data.root={root}"])]
    assert kdetect(*args) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {root}: no labelled boxes (and no class names) in the training split 'train'"
    ]


def _never(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} was reached")

    return fail


@pytest.mark.parametrize("case", ["predict missing", "train root", "train run dir", "eval root"])
def test_inputs_are_checked_before_the_model_is_loaded(
    case, tmp_path_factory, tmp_path, monkeypatch, capsys
):
    """A missing input, a dataset that is not there or a run directory in the way: one line
    naming the path, exit 1, and neither TensorFlow's model checks nor the model ever run."""
    run = tiny_run(tmp_path_factory)
    monkeypatch.setattr(predict_api, "Detector", _never("the predict model"))
    monkeypatch.setattr(evaluate_run, "load_model", _never("the evaluated model"))
    monkeypatch.setattr(loader, "check_options", _never("the model checks"))
    monkeypatch.setattr(training, "_fitting", _never("training"))
    missing = tmp_path / "nothere"
    if case == "predict missing":
        args, expected = ["predict", run, missing], f"{missing}: no such file or folder"
    elif case == "train root":
        args = ["train", SHAPES, "--run-dir", tmp_path / "new", "--set", "data.format=voc"]
        args += ["--set", f"data.root={missing}"]
        expected = f"data.root: path not found: {missing}"
    elif case == "train run dir":
        args = ["train", SHAPES, "--run-dir", run]
        expected = f"{run}: run directory already exists"
    else:
        args = ["evaluate", run, "--data", missing, "--output", tmp_path / "m.json"]
        expected = f"{missing}: no such file or folder"
    capsys.readouterr()
    assert kdetect(*args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines
