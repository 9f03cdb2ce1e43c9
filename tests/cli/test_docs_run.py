"""The docs' commands and Python snippets, run as a reader runs them.

A workspace holds what the docs name: ``runs/demo`` (and ``runs/coco``) a tiny trained shapes
run; ``runs/cells``, ``runs/bccd`` a tiny run trained on BCCD; their packed ``.kdet`` files;
``photos/`` of BCCD images; ``../shared/data`` the real data; ``my_cells.yaml`` the tutorial's
recipe block. Every ``kdetect`` command of README.md and docs/*.md then runs there as written
(placeholders such as ``/path/to/bccd`` become the shared data) and must exit 0 and write the
outputs it names. Two commands stop at a boundary: ``train`` runs up to its first step (the
recipe loads with the command's flags, the data is read, the run directory is checked: the
stub of ``fitting.run_training``), ``serve`` up to starting the server; training and serving
themselves are tested in tests/apps/test_family_commands.py and tests/apps/test_serve_live.py.
A command that needs what this machine has not (a torchvision download, a Label Studio server,
another machine, PASCAL or COCO) is listed in :data:`NOT_RUN` with where it is tested, so a new
command in the docs runs here unless it is listed.

The Python snippets of the docs in :data:`SNIPPET_DOCS` run too, in order, one namespace per
page, with the names a snippet leaves to the reader (``image_array``) defined.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdetect.engine.builders import read_split
from tests.cli.test_docs_commands import COMMANDS, DOCS, ROOT
from tests.train_support import BCCD, has_bccd, kdetect, set_args, tiny_run

#: Text in a command -> why that command does not run here (and what tests it instead).
NOT_RUN = {
    "checkpoint import": "needs torchvision's COCO file, a download "
    "(tests/apps/test_pretrained_cli.py imports files it writes with torchvision)",
    "runs/retinanet-coco": "fine-tunes the imported RetinaNet of the command above",
    "export runs/coco": "deploy.md's exports, of an imported run "
    "(tests/apps/test_pretrained_cli.py exports one)",
    "labelstudio train": "needs a Label Studio server "
    "(tests/apps/test_labelstudio_live.py starts one)",
    "multi_worker": "needs a second machine "
    "(tests/engine/test_distribute.py starts worker processes)",
    "recipes/pascal.yaml": "PASCAL VOC is not in ../shared/data",
    "recipes/coco.yaml": "COCO is not in ../shared/data",
}
#: Placeholders of the docs -> the shared data.
PLACEHOLDERS = {"/path/to/": "../shared/data/", "path/to/": "../shared/data/"}
#: Pages whose Python snippets run; the others need what this machine has not.
SNIPPET_DOCS = ["cli.md", "tutorial.md", "deploy.md"]
SNIPPET_NOT_RUN = {
    "README.md": "trains ResNet50 on PASCAL VOC",
    "datasets.md": "trains BCCD for 12 epochs",
    "evaluation.md": "names the reader's own files (pred.jsonl, annotations)",
    "model.md": "trains 200 steps (tests/models/test_model.py trains the same model)",
    "pretrained.md": "needs torchvision's COCO file",
    "recipes.md": "trains the shapes recipe for 3 epochs (make demo trains it)",
}
TINY_BCCD = [
    "model.image_size=[64,64]",
    "train.epochs=1",
    "train.steps_per_epoch=1",
    "train.validation_steps=1",
    "data.batch_size=2",
    "eval.max_images=4",
    "eval.samples=0",
]
OUTPUT_FLAGS = {"--output", "-o", "--save-images", "--plots"}


def _runnable(line: str) -> bool:
    return not any(text in line for text in NOT_RUN)


def _needs_bccd(line: str) -> bool:
    return any(name in line for name in ("bccd", "cells", "photos", "raccoon"))


def _few_images(dataset: Path, into: Path, count: int = 4) -> None:
    """A VOC dataset of the first ``count`` images of each split of ``dataset`` (its files
    linked, its COCO files kept): the docs' commands read real photos, quickly."""
    (into / "ImageSets" / "Main").mkdir(parents=True)
    for name in ("Annotations", "JPEGImages", "coco", "classes.txt"):
        if (dataset / name).exists():
            (into / name).symlink_to(dataset / name)
    for split in (dataset / "ImageSets" / "Main").glob("*.txt"):
        stems = split.read_text().split()[:count]
        (into / "ImageSets" / "Main" / split.name).write_text("\n".join(stems) + "\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The folder the docs' commands run in (see the module docstring)."""
    base = tmp_path_factory.mktemp("docs")
    work = base / "work"
    (work / "runs").mkdir(parents=True)
    (work / "recipes").symlink_to(ROOT / "recipes")
    demo = tiny_run(tmp_path_factory)
    for name in ("demo", "coco", "shapes-20250101-120000"):
        shutil.copytree(demo, work / "runs" / name)
    assert kdetect("checkpoint", "pack", work / "runs/demo", "-o", work / "runs/demo.kdet") == 0
    image = np.asarray(Image.open(sorted((demo / "samples").glob("*.png"))[0]).convert("RGB"))
    for name in ("a.jpg", "b.png", "dog.jpg"):
        Image.fromarray(image).save(work / name)
    if has_bccd():
        for name in ("bccd", "raccoon"):
            _few_images(BCCD.parent / name, base / "shared" / "data" / name)
        (work / "bccd").symlink_to(base / "shared" / "data" / "bccd")
        cells = work / "runs" / "cells"
        bccd_cpu = ROOT / "recipes/bccd_cpu.yaml"
        assert kdetect("train", bccd_cpu, "--data", work / "bccd", "--run-dir", cells,
                       *set_args(TINY_BCCD)) == 0  # fmt: skip
        for name in ("bccd", "bccd-20261125-101500", "traffic"):
            shutil.copytree(cells, work / "runs" / name)
        assert kdetect("checkpoint", "pack", cells, "-o", work / "runs/bccd.kdet") == 0
        val = (BCCD / "ImageSets/Main/val.txt").read_text().split()[:2]
        for folder in ("photos", "new_photos"):
            (work / folder).mkdir()
            for stem in val:
                shutil.copy(BCCD / "JPEGImages" / f"{stem}.jpg", work / folder)
        recipe = re.search(r"```yaml\n(.*?)```", (ROOT / "docs/tutorial.md").read_text(), re.S)
        (work / "my_cells.yaml").write_text(recipe.group(1))
    return work


@pytest.fixture()
def at_boundaries(monkeypatch):
    """``train`` stops where its first step would start, ``serve`` where its server would;
    returns what reached them."""
    from kdetect.apps import serve as serving
    from kdetect.engine import fitting

    reached = []

    def run_training(recipe, run_dir, state_info, callbacks, console, resume=False, **_):
        source = read_split(recipe, recipe.data.train_split, None, strict=True)
        reached.append(("train", recipe, source))
        return Path(run_dir)

    monkeypatch.setattr(fitting, "run_training", run_training)
    monkeypatch.setattr(serving, "serve", lambda model, **options: reached.append(("serve",)))
    return reached


@contextlib.contextmanager
def _made_anew(args: list[str], workspace: Path):
    """A new run the docs train into (``train --run-dir X``) that the workspace already holds
    for the other commands: set aside while the command runs, then put back."""
    new_run = None
    if args[0] == "train" and "--run-dir" in args and "--resume" not in args:
        new_run = workspace / args[args.index("--run-dir") + 1]
    if new_run is None or not new_run.exists():
        yield
        return
    kept = new_run.rename(new_run.with_name(new_run.name + ".kept"))
    try:
        yield
    finally:
        shutil.rmtree(new_run, ignore_errors=True)
        kept.rename(new_run)


def _outputs(args: list[str]) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg in OUTPUT_FLAGS]


RUNNABLE = [(doc, line) for doc, line in COMMANDS if _runnable(line)]


def test_every_command_that_does_not_run_says_why():
    skipped = [line for _, line in COMMANDS if not _runnable(line)]
    assert len(RUNNABLE) >= 35 and len(skipped) <= 15
    for text in NOT_RUN:
        assert any(text in line for line in skipped), f"{text}: no docs command left to skip"


@pytest.mark.parametrize("doc, line", RUNNABLE, ids=[f"{d}: {c[:60]}" for d, c in RUNNABLE])
def test_each_command_in_the_docs_runs(doc, line, workspace, at_boundaries, monkeypatch):
    if _needs_bccd(line) and not has_bccd():
        pytest.skip("../shared/data/bccd is absent")
    if line.split()[1:2] == ["predict"] and ".mp4" in line:
        pytest.importorskip("cv2", reason="video needs OpenCV (an optional dependency)")
        import cv2

        writer = cv2.VideoWriter(str(workspace / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                 5, (64, 64))  # fmt: skip
        for _ in range(6):
            writer.write(np.full((64, 64, 3), 128, np.uint8))
        writer.release()
    for placeholder, real in PLACEHOLDERS.items():
        line = line.replace(placeholder, real)
    args = shlex.split(line)[1:]
    monkeypatch.chdir(workspace)
    for output in _outputs(args):  # each command of the docs writes anew
        path = workspace / output
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    with _made_anew(args, workspace):
        assert kdetect(*args) == 0, line
    for output in _outputs(args):
        assert (workspace / output).exists(), f"{line}: wrote no {output}"
    if args[0] in ("train", "serve"):
        assert at_boundaries and at_boundaries[-1][0] == args[0]
    if args[0] == "train" and not {"--resume"} & set(args):
        _, recipe, source = at_boundaries[-1]
        assert len(source) > 0, f"{line}: no training images"


def _snippets(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S)


def test_every_page_with_python_runs_it_or_says_why():
    pages = {path.name for path in DOCS if "```python" in path.read_text()}
    assert pages == set(SNIPPET_DOCS) | set(SNIPPET_NOT_RUN)


@pytest.mark.parametrize("doc", SNIPPET_DOCS)
def test_each_python_snippet_runs(doc, workspace, monkeypatch):
    if doc == "tutorial.md" and not has_bccd():
        pytest.skip("../shared/data/bccd is absent")
    monkeypatch.chdir(workspace)
    image = np.asarray(Image.open(workspace / "a.jpg"))
    namespace = {"image_array": image}
    for snippet in _snippets(doc):
        exec(compile(snippet, f"{doc} snippet", "exec"), namespace)  # noqa: S102
    if doc == "deploy.md":
        assert (workspace / "demo.onnx").is_file() and (workspace / "demo.tflite").is_file()
        assert (workspace / "exported/demo/1/saved_model.pb").is_file()
    else:
        assert isinstance(namespace["results"], list) and namespace["classes"]
