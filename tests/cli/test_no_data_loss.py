"""No command writes over its inputs or leaves a half-written output; COCO id clashes are errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from kdetect.data.readers import read_annotations
from kdetect.models import export_formats as kdetect_export
from kdetect.plumbing.errors import CheckpointError, DataError
from kdetect.plumbing.paths import atomic_path, is_temporary
from kdetect.runs import pack, save_keras, write_classes
from tests.data_support import write_coco, write_csv, write_voc, write_yolo
from tests.train_support import SHAPES, kdetect, tiny_run


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a hash of its content (symlinks by their target)."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            state[str(path)] = "-> " + str(path.readlink())
        elif path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[str(path)] = "dir"
    return state


def leftovers(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if is_temporary(p))


@pytest.fixture
def world(tmp_path) -> dict[str, Path]:
    """A run (fake model), an image folder, a packed run, a COCO file and a detections file."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: fake\n")
    write_classes(run / "classes.json", ["circle"])
    with zipfile.ZipFile(run / "model.keras", "w") as zf:
        zf.writestr("config.json", "{}")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), "red").save(images / "a.png")
    Image.new("RGB", (8, 8), "blue").save(images / "b.jpg")
    (tmp_path / "link").symlink_to(images)
    coco = write_coco(tmp_path / "coco")
    dets = tmp_path / "dets.jsonl"
    dets.write_text('{"file": "a.jpg", "objects": []}\n')
    with zipfile.ZipFile(run / "checkpoints" / "best.keras", "w") as zf:
        zf.writestr("config.json", "{}")
    other = tmp_path / "runs" / "other"  # a run none of the commands reads
    other.mkdir(parents=True)
    (other / "kdetect.json").write_text('{"status": "finished"}\n')
    (other / "model.keras").write_bytes(b"another run's model")
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "keep.txt").write_text("an earlier export")
    (tmp_path / "old.onnx").write_bytes(b"an earlier onnx file")
    return {
        "tmp": tmp_path,
        "run": run,
        "images": images,
        "coco": coco,
        "gt": coco / "annotations" / "instances_train.json",
        "dets": dets,
        "packed": pack(run, tmp_path / "run.kdet"),
        "exported": exported,
        "other": other,
        **_sources(tmp_path),
    }


def _sources(tmp_path: Path) -> dict[str, Path]:
    """VOC, YOLO and CSV datasets (beside `world`'s COCO one), and a COCO and a CSV file that
    name their images (in `far/`) by absolute paths."""
    write_voc(tmp_path / "voc")
    write_yolo(tmp_path / "yolo")
    write_csv(tmp_path / "csv")
    far = write_csv(tmp_path / "far")  # its images, named from elsewhere
    (tmp_path / "abs").mkdir()
    csv = (far / "train.csv").read_text().replace("\n", f"\n{far}/")
    (tmp_path / "abs" / "train.csv").write_text(csv.rstrip(f"{far}/"))
    doc = json.loads((write_coco(tmp_path / "nearcoco") / "annotations" / "instances_train.json")
                     .read_text())  # fmt: skip
    for image in doc["images"]:
        image["file_name"] = str(far / image["file_name"])
    (tmp_path / "abs" / "instances_train.json").write_text(json.dumps(doc))
    return {name: tmp_path / name for name in ("voc", "yolo", "csv")}


# (arguments with {name} taken from `world`, the message of the one error line)
REFUSED = {
    "predict --output an input image": (
        "predict {run} {images}/a.png --output {images}/a.png",
        "--output {images}/a.png: is the input {images}/a.png; choose another path",
    ),
    "predict --output the model": (
        "predict {run} {images} --output {run}/model.keras",
        "--output {run}/model.keras: is the input {run}/model.keras; choose another path",
    ),
    "predict --save-images the input folder": (
        "predict {run} {images} --save-images {images}",
        "--save-images {images}: is the input {images}; choose another path",
    ),
    "predict --save-images inside the input folder": (  # a later -r run would read them back
        "predict {run} {images} --save-images {images}/drawn",
        "--save-images {images}/drawn: is inside the input {images}; choose another path",
    ),
    "predict --output inside the input folder": (
        "predict {run} {images} --output {images}/predictions.jsonl",
        "--output {images}/predictions.jsonl: is inside the input {images}; choose another path",
    ),
    "predict --save-images a symlink to it": (
        "predict {run} {images}/b.jpg --save-images {tmp}/link",
        "--save-images {tmp}/link/b.jpg: is the input {images}/b.jpg; choose another path",
    ),
    "evaluate --output the detections": (
        "evaluate --ground-truth {gt} --detections {dets} --output {dets}",
        "--output {dets}: is the input {dets}; choose another path",
    ),
    "evaluate --output the ground truth": (
        "evaluate --ground-truth {gt} --detections {dets} --output {gt}",
        "--output {gt}: is the input {gt}; choose another path",
    ),
    "transform into the dataset": (
        "dataset transform {coco} --type coco --output {coco}",
        "--output {coco}: is the input {coco}; choose another path",
    ),
    "transform into a folder holding it": (
        "dataset transform {coco} --type coco --output {tmp}",
        "--output {tmp}: holds the input {coco}; choose another path",
    ),
    "pack onto the run's model": (
        "checkpoint pack {run} -o {run}/model.keras",
        "--output {run}/model.keras: is the input {run}/model.keras; choose another path",
    ),
    "unpack onto the packed file": (
        "checkpoint unpack {packed} {packed}",
        "DEST {packed}: is the input {packed}; choose another path",
    ),
    "export onto the .keras file": (
        "export {run}/model.keras --format tflite -o {run}/model.keras --overwrite",
        "--output {run}/model.keras: is the input {run}/model.keras; choose another path",
    ),
    "export --overwrite a folder holding the run": (
        "export {run} -o {tmp} --overwrite",
        "--output {tmp}: holds the input {run}; choose another path",
    ),
    "export into a non-empty folder": (
        "export {run} -o {exported}",
        "--output {exported}: folder is not empty; use --overwrite to replace it",
    ),
    "export onto an existing file": (
        "export {run} --format onnx -o {tmp}/old.onnx",
        "--output {tmp}/old.onnx: file exists; use --overwrite to replace it",
    ),
    # a folder where a file goes (it would be swapped out whole), a file where a folder goes
    "predict --output a folder": (
        "predict {run} {images}/a.png --output {exported}",
        "--output {exported}: is a folder; give a file path",
    ),
    "predict --output below a file": (
        "predict {run} {images}/a.png --output {dets}/out.jsonl",
        "--output {dets}/out.jsonl: {dets} is a file, not a folder",
    ),
    "predict --save-images a file": (
        "predict {run} {images}/a.png --save-images {dets}",
        "--save-images {dets}: is a file; give a folder",
    ),
    "evaluate --output a folder": (
        "evaluate --ground-truth {gt} --detections {dets} --output {exported}",
        "--output {exported}: is a folder; give a file path",
    ),
    "evaluate --plots a file": (
        "evaluate --ground-truth {gt} --detections {dets} --plots {tmp}/old.onnx",
        "--plots {tmp}/old.onnx: is a file; give a folder",
    ),
    "unpack into a file": (
        "checkpoint unpack {packed} {dets}",
        "DEST {dets}: is a file; give a folder",
    ),
    "unpack below a file": (
        "checkpoint unpack {packed} {dets}/run",
        "DEST {dets}/run: {dets} is a file, not a folder",
    ),
    "pack below a file": (
        "checkpoint pack {run} -o {dets}/run.kdet",
        "--output {dets}/run.kdet: {dets} is a file, not a folder",
    ),
    "export onnx --overwrite a folder": (
        "export {run} --format onnx -o {exported} --overwrite",
        "--output {exported}: is a folder; give a file path",
    ),
    "export saved_model onto a file": (
        "export {run} -o {dets} --overwrite",
        "--output {dets}: is a file; give a folder",
    ),
}

# Nothing is written inside a run directory (the one read or any other), with or without
# --overwrite: only training and `kdetect evaluate` (metrics.json, plots/) write there.
INSIDE_RUN = "is inside the input {run}; choose another path"
IN_RUN = "is inside the run {run}; choose a path outside it"
IN_OTHER = "is inside the run {other}; choose a path outside it"
HOLDS_OTHER = "holds the run {other}; choose another path"
# (arguments, the one error line, whether the command has --overwrite)
RUN_OUTPUTS = {
    "export onnx onto the run's model": (
        "export {run} --format onnx -o {run}/model.keras",
        "--output {run}/model.keras: " + INSIDE_RUN,
        True,
    ),
    "export tflite onto the best checkpoint": (
        "export {run} --format tflite -o {run}/checkpoints/best.keras",
        "--output {run}/checkpoints/best.keras: " + INSIDE_RUN,
        True,
    ),
    "export onnx onto the recipe": (
        "export {run} --format onnx -o {run}/recipe.yaml",
        "--output {run}/recipe.yaml: " + INSIDE_RUN,
        True,
    ),
    "export saved_model into the run": (
        "export {run} -o {run}/exported",
        "--output {run}/exported: " + INSIDE_RUN,
        True,
    ),
    "export saved_model onto the run": (
        "export {run} -o {run}",
        "--output {run}: is the input {run}; choose another path",
        True,
    ),
    "export the packed run into the run": (
        "export {packed} --format onnx -o {run}/model.keras",
        "--output {run}/model.keras: " + IN_RUN,
        True,
    ),
    "export a checkpoint onto the run's model": (
        "export {run}/checkpoints/best.keras --format onnx -o {run}/model.keras",
        "--output {run}/model.keras: " + IN_RUN,
        True,
    ),
    "export into another run": (
        "export {run} --format onnx -o {other}/m.onnx",
        "--output {other}/m.onnx: " + IN_OTHER,
        True,
    ),
    "export over a folder holding a run": (
        "export {run} -o {tmp}/runs",
        "--output {tmp}/runs: " + HOLDS_OTHER,
        True,
    ),
    "predict coco onto a checkpoint": (
        "predict {run} {images}/a.png --format coco -o {run}/checkpoints/best.keras",
        "--output {run}/checkpoints/best.keras: " + INSIDE_RUN,
        True,
    ),
    "predict jsonl into the run": (
        "predict {run} {images}/a.png -o {run}/p.jsonl",
        "--output {run}/p.jsonl: " + INSIDE_RUN,
        True,
    ),
    "predict voc into the run": (
        "predict {run} {images}/a.png --format voc -o {run}/voc",
        "--output {run}/voc: " + INSIDE_RUN,
        True,
    ),
    "predict yolo onto the checkpoints": (
        "predict {run} {images}/a.png --format yolo -o {run}/checkpoints",
        "--output {run}/checkpoints: " + INSIDE_RUN,
        True,
    ),
    "predict labelstudio onto the recipe": (
        "predict {run} {images}/a.png --format labelstudio -o {run}/recipe.yaml",
        "--output {run}/recipe.yaml: " + INSIDE_RUN,
        True,
    ),
    "predict --save-images into the run": (
        "predict {run} {images}/a.png --save-images {run}/drawn",
        "--save-images {run}/drawn: " + INSIDE_RUN,
        True,
    ),
    "predict with the packed run into the run": (
        "predict {packed} {images}/a.png -o {run}/model.keras",
        "--output {run}/model.keras: " + IN_RUN,
        True,
    ),
    "predict into another run": (
        "predict {run} {images}/a.png -o {other}/p.jsonl",
        "--output {other}/p.jsonl: " + IN_OTHER,
        True,
    ),
    "predict voc over a folder holding a run": (
        "predict {run} {images}/a.png --format voc -o {tmp}/runs",
        "--output {tmp}/runs: " + HOLDS_OTHER,
        True,
    ),
    "pack into the run": (
        "checkpoint pack {run} -o {run}/run.kdet",
        "--output {run}/run.kdet: " + INSIDE_RUN,
        False,
    ),
    "pack into another run": (
        "checkpoint pack {run} -o {other}/run.kdet",
        "--output {other}/run.kdet: " + IN_OTHER,
        False,
    ),
    "import into a run": (
        "checkpoint import {dets} -o {run}/imported",
        "--output {run}/imported: " + IN_RUN,
        False,
    ),
    "convert into a run": (
        "dataset convert {coco} --type coco --to voc -o {run}/voc",
        "--output {run}/voc: " + IN_RUN,
        True,
    ),
    "convert over a folder holding a run": (
        "dataset convert {coco} --type coco --to voc -o {tmp}/runs",
        "--output {tmp}/runs: " + HOLDS_OTHER,
        True,
    ),
    "transform into a run": (
        "dataset transform {coco} --type coco --output {run}/tfr",
        "--output {run}/tfr: " + IN_RUN,
        False,
    ),
    "evaluate offline into a run": (
        "evaluate --ground-truth {gt} --detections {dets} --output {run}/metrics.json",
        "--output {run}/metrics.json: " + IN_RUN,
        False,
    ),
    "evaluate offline plots into a run": (
        "evaluate --ground-truth {gt} --detections {dets} --plots {run}/plots",
        "--plots {run}/plots: " + IN_RUN,
        False,
    ),
    "evaluate a run onto its model": (
        "evaluate {run} --output {run}/model.keras",
        "--output {run}/model.keras: " + INSIDE_RUN,
        False,
    ),
    "evaluate a run's plots into its checkpoints": (
        "evaluate {run} --plots {run}/checkpoints",
        "--plots {run}/checkpoints: " + INSIDE_RUN,
        False,
    ),
    "labelstudio train into the run": (
        "labelstudio train {run} --project 1 --training-dir {run}/ls",
        "--training-dir {run}/ls: " + INSIDE_RUN,
        False,
    ),
    "serve retraining into another run": (
        "serve {run} --training-dir {other}/ls",
        "--training-dir {other}/ls: " + IN_OTHER,
        False,
    ),
}
for _case, (_args, _message, _overwrite) in RUN_OUTPUTS.items():
    for _flag in ["", " --overwrite"] if _overwrite else [""]:
        REFUSED[_case + _flag] = (_args + _flag, _message)
REFUSED["unpack into the run"] = (
    "checkpoint unpack {packed} {run}/unpacked",
    "DEST {run}/unpacked: " + IN_RUN,
)
REFUSED["inspect draws into a run"] = (
    "dataset inspect {coco} --type coco --show 1 --output {run}/drawn",
    "--output {run}/drawn/0000_a.jpg: " + IN_RUN,
)
REFUSED["inspect draws into the yolo images it reads"] = (
    "dataset inspect {yolo} --type yolo --show 1 --output {yolo}/images/train/drawn",
    "--output {yolo}/images/train/drawn/0000_a.jpg: is inside the input {yolo}/images/train; "
    "choose another path",
)

# `dataset convert` never writes inside its source: the source's folder, or any folder its
# images or labels are read from (also one named by absolute paths); nor over a folder holding it.
CONVERT_OUTPUTS = {
    "voc below its images": (
        "{voc} --type voc",
        "{voc}/JPEGImages/out",
        "is inside the input {voc}",
    ),
    "yolo below its images": (
        "{yolo} --type yolo",
        "{yolo}/images/train/converted",
        "is inside the input {yolo}",
    ),
    "yolo below its labels": (
        "{yolo}/data.yaml --type yolo",
        "{yolo}/labels/x",
        "is inside the input {yolo}",
    ),
    "coco below its images": (
        "{coco} --type coco",
        "{coco}/images/out",
        "is inside the input {coco}",
    ),
    "coco file below its annotations": (
        "{gt} --type coco",
        "{coco}/annotations/out",
        "is inside the input {coco}/annotations",
    ),
    "csv below its folder": ("{csv} --type csv", "{csv}/out", "is inside the input {csv}"),
    "coco images named by absolute paths": (
        "{tmp}/abs/instances_train.json --type coco",
        "{tmp}/far/out",
        "is inside the input {tmp}/far",
    ),
    "csv images named by absolute paths": (  # outside the dataset: read only when asked
        "{tmp}/abs/train.csv --type csv --allow-outside-root",
        "{tmp}/far/sub/out",
        "is inside the input {tmp}/far",
    ),
    "an output holding the source": ("{voc} --type voc", "{tmp}", "holds the input {voc}"),
    "an output that is the images' folder": (
        "{tmp}/abs/train.csv --type csv --allow-outside-root",
        "{tmp}/far",
        "is the input {tmp}/far",
    ),
}
for _case, (_source, _output, _rest) in CONVERT_OUTPUTS.items():
    for _flag in ("", " --overwrite"):
        REFUSED[f"convert {_case}{_flag}"] = (
            f"dataset convert {_source} --to coco -o {_output}{_flag}",
            f"--output {_output}: {_rest}; choose another path",
        )

REFUSED["labelstudio image_root without the images"] = (
    "predict {run} {images}/a.png --format labelstudio -o {tmp}/t.json "
    "--format-option image_root={coco}",
    "--format-option image_root={coco}: the image {images}/a.png is not inside it "
    "(Label Studio serves only files below its document root)",
)


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_outputs_never_replace_inputs(case, world, capsys):
    args, message = (text.format(**world) for text in REFUSED[case])
    before = snapshot(world["tmp"])
    assert kdetect(*args.split()) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert snapshot(world["tmp"]) == before  # nothing written, nothing lost


def test_evaluate_still_writes_its_runs_metrics_and_plots(tmp_path_factory, tmp_path):
    """The run API's own outputs stay allowed: `kdetect evaluate RUN` writes RUN/metrics.json
    and RUN/plots (by default or named), and nothing else of the run changes."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run(tmp_path_factory), run)
    (run / "metrics.json").unlink()
    shutil.rmtree(run / "plots", ignore_errors=True)
    before = snapshot(run)
    args = ("--split", "val", "--metric", "voc")
    assert (
        kdetect("evaluate", run, *args, "--output", run / "metrics.json", "--plots", run / "plots")
        == 0
    )
    assert json.loads((run / "metrics.json").read_text())["metric"] == "voc"
    assert any((run / "plots").glob("*.png"))
    changed = {k for k, v in snapshot(run).items() if before.get(k) != v}
    assert {Path(k).relative_to(run).parts[0] for k in changed} == {"metrics.json", "plots"}
    assert kdetect("evaluate", run, *args) == 0  # the defaults, the same two places


def test_outputs_in_missing_folders_are_created(tmp_path_factory, tmp_path, capsys):
    run = tiny_run(tmp_path_factory)
    sample = sorted((run / "samples").glob("*.png"))[0]
    out = tmp_path / "new" / "dir" / "out.jsonl"
    assert kdetect("predict", run, sample, "--output", out) == 0
    assert json.loads(out.read_text())["file"] == str(sample)
    assert kdetect("checkpoint", "pack", run, "-o", tmp_path / "a" / "b" / "run.kdet") == 0
    dest = tmp_path / "c" / "d" / "run"
    assert kdetect("checkpoint", "unpack", tmp_path / "a" / "b" / "run.kdet", dest) == 0
    assert (dest / "model.keras").is_file() and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["file", "folder", "keras"])
def test_atomic_writes_keep_the_old_content_on_failure(kind, tmp_path):
    target = tmp_path / ("out.keras" if kind == "keras" else "out")

    def write(path: Path, text: str) -> None:
        if kind == "folder":
            path.mkdir()
            (path / "part").write_text(text)
        else:
            path.write_text(text)

    class Model:  # fails half-way through model.save, as a killed process or a full disk would
        def save(self, path):
            write(path, "half")
            raise OSError("disk full")

    write(target, "old")
    error = CheckpointError if kind == "keras" else OSError  # save_keras: one line naming it
    with pytest.raises(error, match="disk full"):
        if kind == "keras":
            save_keras(Model(), target)
        else:
            with atomic_path(target) as tmp:
                write(tmp, "half")
                raise OSError("disk full")
    content = target / "part" if kind == "folder" else target
    assert content.read_text() == "old"
    assert sorted(tmp_path.rglob("*")) == sorted({target, content})  # no leftovers
    with atomic_path(target) as tmp:
        write(tmp, "new")
    assert content.read_text() == "new"
    assert sorted(tmp_path.rglob("*")) == sorted({target, content})


def test_export_overwrite_replaces_only_a_complete_export(
    tmp_path_factory, tmp_path, capsys, monkeypatch
):
    run = tiny_run(tmp_path_factory)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier export")

    def killed(classes):  # the SavedModel is written, its assets are not
        raise RuntimeError("killed half-way")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="killed half-way"):
        patch.setattr(kdetect_export, "label_map_pbtxt", killed)
        kdetect("export", run, "-o", out, "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert leftovers(tmp_path) == []

    assert kdetect("export", run, "-o", out, "--overwrite") == 0
    assert (out / "saved_model.pb").is_file() and not (out / "keep.txt").exists()
    assert json.loads((out / "assets.extra" / "classes.json").read_text())["classes"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda doc: doc["images"][2].update(id=1), r"duplicate image id 1$"),
        (
            lambda doc: [image.update(id=7) for image in doc["images"]],
            r"duplicate image id 7$",
        ),
        (lambda doc: doc["categories"][1].update(id=10), r"duplicate category id 10$"),
        (lambda doc: doc["categories"][1].update(name=" cat"), r"duplicate category name 'cat'$"),
        (
            lambda doc: doc["categories"].extend(
                [{"id": 20, "name": "cat"}, {"id": 21, "name": "dog"}]
            ),
            r"duplicate category names 'cat', 'dog'$",
        ),
    ],
    ids=["image id", "three images one id", "category id", "category name", "two names"],
)
def test_coco_duplicate_ids_are_errors(change, message, tmp_path):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_train.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=rf"^{path}: {message}") as info:
        read_annotations("coco", root, "train")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("inside", ["checkpoints/new", "new", "deeper/new"])
def test_a_new_run_is_never_started_inside_another_run(inside, world, capsys):
    before = snapshot(world["tmp"])
    run_dir = world["run"] / inside
    assert kdetect("train", SHAPES, "--run-dir", run_dir) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {run_dir}: is inside the run {world['run']}; choose another --run-dir"
    ]
    assert snapshot(world["tmp"]) == before


def test_label_studio_retraining_folder_is_beside_the_run_not_inside_it(world):
    from kdetect.apps.labelstudio.training import TrainingSettings

    tmp = world["tmp"]
    for served in (world["run"], world["run"] / "model.keras", world["run"] / "checkpoints"):
        assert TrainingSettings.beside(served).work_dir == tmp / "run-labelstudio", served
    best = world["run"] / "checkpoints" / "best.keras"
    assert best.is_file()
    assert TrainingSettings.beside(best).work_dir == tmp / "run-labelstudio"
    assert TrainingSettings.beside(world["packed"]).work_dir == tmp / "run.kdet-labelstudio"
