"""``kdetect checkpoint import`` on the command line, and the imported run through every command.

torchvision runs in its own interpreter (``tests/torch_peer.py``):
``tests/torchvision_reference.py`` makes one random but non-trivial ``fasterrcnn_resnet50_fpn``
checkpoint with COCO's 91 labels, laid out as the published COCO_V1 file, and a short torch
script (``DERIVE``) makes the other inputs from it: the checkpoint fine-tuned on 3 classes (the
predictor replaced as torchvision's fine-tuning tutorial does, saved as its reference training
script does), a ``fasterrcnn_mobilenet_v3_large_fpn`` state dict (another architecture's keys)
and a whole pickled ``nn.Module``. The COCO file is imported once through the CLI; that run then
goes through ``checkpoint info``, ``predict``, ``evaluate``, ``export``, ``serve`` and
``train --set train.init_from=RUN``.

ResNet50 at torchvision's 800-pixel scale takes seconds per image on a CPU, so one photo is
predicted, one is evaluated and fine-tuning takes six steps of two small images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from torch_peer import REPO_ROOT, run_torch

from kdetect.models.faster_rcnn.torchvision import ARCHITECTURES
from kdetect.pretrained.coco import coco_class_names
from kdetect.pretrained.state_dict import read_state_dict
from tests.pretrained_support import (
    assert_finetuned_from,
    assert_imported_run,
    photo_arrays,
    write_safetensors,
)
from tests.train_support import kdetect, set_args

RACCOON = REPO_ROOT.parent / "shared" / "data" / "raccoon"
REFERENCE = Path(__file__).resolve().parents[1].joinpath("torchvision_reference.py")
FINETUNE_RECIPE = REPO_ROOT / "recipes" / "coco_finetune.yaml"
ARCH = "fasterrcnn_resnet50_fpn"
PHOTO = RACCOON / "JPEGImages" / "raccoon-104.jpg"  # 600x304
CALIBRATION = ("raccoon-104", "raccoon-102")
# predict's default --min-score; --sharpen-cls 0.5 spreads the reference's scores over ~0.3-0.8,
# so the threshold keeps some detections and drops others.
MIN_SCORE = 0.5
# predict rounds boxes to 0.01 px and scores to 1e-4; the SavedModel's boxes are normalised.
BOX_TOL, SCORE_TOL = 0.05, 1e-3

pytestmark = pytest.mark.skipif(
    not (RACCOON / "JPEGImages").is_dir(), reason="../shared/data/raccoon not available"
)

MOBILENET = "fasterrcnn_mobilenet_v3_large_fpn"
FIRST_TENSOR = "backbone.body.0.0.weight"  # the first tensor of torchvision's mobilenet files
BAD_TENSOR = "roi_heads.box_head.fc6.weight"

# Run by the torch interpreter: argv = COCO.pth FINETUNED.pth FINETUNED_WITH_SCHEDULER.pth
# OTHER_ARCH.pth MODULE.pth.
DERIVE = """
import argparse, sys
import torch, torchvision
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

coco, finetuned, with_scheduler, other_arch, module = sys.argv[1:6]
torch.set_num_threads(2)
torch.manual_seed(0)
# torchvision's fine-tuning tutorial: a new predictor for 3 classes + background, trained a step.
predictor = FastRCNNPredictor(1024, 4)
optimizer = torch.optim.SGD(predictor.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[16, 22], gamma=0.1)
scores, deltas = predictor(torch.randn(2, 1024))
(scores.sum() + deltas.sum()).backward()
optimizer.step()
scheduler.step()
state = torch.load(coco, weights_only=True)
for key, value in predictor.state_dict().items():
    state["roi_heads.box_predictor." + key] = value
# As references/detection/train.py saves it (there with "lr_scheduler" too).
checkpoint = {
    "model": state,
    "optimizer": optimizer.state_dict(),
    "args": argparse.Namespace(model="fasterrcnn_resnet50_fpn", lr=0.005, epochs=26),
    "epoch": 25,
}
torch.save(checkpoint, finetuned)
torch.save({**checkpoint, "lr_scheduler": scheduler.state_dict()}, with_scheduler)
mobilenet = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
    weights=None, weights_backbone=None
)
torch.save(mobilenet.state_dict(), other_arch)
torch.save(predictor, module)
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The checkpoints (and other files) the tests import."""
    folder = tmp_path_factory.mktemp("pretrained_cli")
    calibration = photo_arrays(folder, CALIBRATION)
    files = {
        "coco": folder / "coco.pth",
        "finetuned": folder / "finetuned.pth",
        "finetuned_with_scheduler": folder / "finetuned_with_scheduler.pth",
        "other_arch": folder / "mobilenet_v3.pth",
        "module": folder / "module.pth",
    }
    run_torch(
        REFERENCE.read_text(),
        "make",
        ARCH,
        files["coco"],
        "--legacy-names",
        "--sharpen-cls",
        "0.5",
        "--calibrate",
        *calibration,
        timeout=900,
    )
    run_torch(
        DERIVE,
        files["coco"],
        files["finetuned"],
        files["finetuned_with_scheduler"],
        files["other_arch"],
        files["module"],
    )
    # The mobilenet checkpoint as safetensors: every float tensor NaN, or one Inf in fc6.
    state = read_state_dict(files["other_arch"])
    files["all_nan"], files["one_inf"] = folder / "all_nan.safetensors", folder / "inf.safetensors"
    nan, inf = {}, {}
    for key, value in state.items():
        floating = value.dtype.kind == "f"
        tag = "F32" if floating else "I64"
        nan[key] = (tag, np.full_like(value, np.nan) if floating else value)
        if key == BAD_TENSOR:
            value = value.copy()
            value.flat[value.size // 2] = np.inf
        inf[key] = (tag, value)
    write_safetensors(files["all_nan"], nan)
    write_safetensors(files["one_inf"], inf)
    data = files["coco"].read_bytes()
    files["truncated"] = folder / "truncated.pth"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["jpeg"] = PHOTO
    files["three_names"] = folder / "three_names.txt"
    files["three_names"].write_text("raccoon\nfox\nbadger\n")
    return files


@pytest.fixture(scope="module")
def every_arch(inputs) -> dict[str, Path]:
    """A non-trivial COCO checkpoint of every importable architecture (the reference's
    ``make``, batch norm calibrated on the same photos as ``inputs["coco"]``)."""
    folder = inputs["coco"].parent
    calibration = [folder / f"{name}.npy" for name in CALIBRATION]
    files = {ARCH: inputs["coco"]}
    chain = []  # the reference's commands, chained with "+": one torch interpreter
    for arch in ARCHITECTURES:
        if arch not in files:
            files[arch] = folder / f"{arch}.pth"
            if chain:
                chain.append("+")
            chain += ["make", arch, files[arch], "--calibrate", *calibration]
    run_torch(REFERENCE.read_text(), *chain, timeout=900)
    return files


@pytest.fixture(scope="module")
def coco_run(inputs, tmp_path_factory) -> Path:
    """The COCO checkpoint imported once through the CLI."""
    run = tmp_path_factory.mktemp("runs") / "coco"
    assert kdetect("checkpoint", "import", inputs["coco"], "--output", run) == 0
    return run


@pytest.fixture(scope="module")
def coco_model(coco_run):
    """``(model, classes)`` of the imported run, loaded once."""
    from kdetect.runs import load_model

    return load_model(coco_run)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """The photo as ``kdetect predict`` reads it."""
    from kdetect.data.images import load_image

    return np.asarray(load_image(str(PHOTO)))


@pytest.fixture(scope="module")
def predicted(coco_run, tmp_path_factory) -> list[dict]:
    """``kdetect predict RUN PHOTO --output out.jsonl``'s lines (default --min-score)."""
    out = tmp_path_factory.mktemp("predict") / "out.jsonl"
    assert kdetect("predict", coco_run, PHOTO, "--output", out) == 0
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")  # lossless: the same pixels as predict's
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (hidden ones too) with its bytes (None for a folder)."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def _assert_same_objects(ours: list[dict], theirs: list[dict]) -> None:
    """The same detections (label, box, score within tolerance) above MIN_SCORE, in any order;
    detections within SCORE_TOL of the threshold may be on either side of it."""

    def clear(objects):
        return [o for o in objects if o["score"] >= MIN_SCORE + SCORE_TOL]

    ours, theirs = clear(ours), clear(theirs)
    assert len(ours) == len(theirs) > 0
    used = [False] * len(ours)
    for want in theirs:
        for i, got in enumerate(ours):
            if (
                not used[i]
                and got["label_id"] == want["label_id"]
                and abs(got["score"] - want["score"]) <= SCORE_TOL
                and np.abs(np.subtract(got["bbox"], want["bbox"])).max() <= BOX_TOL
            ):
                used[i] = True
                break
        else:
            raise AssertionError(f"no match for {want} among {ours}")


# --------------------------------------------------------------------------------------------
# 1. Bad input: exit 1, one line naming the file or option, nothing left at --output.
# --------------------------------------------------------------------------------------------


def _existing_output(runs: Path) -> Path:
    output = runs / "imported"
    output.mkdir()
    (output / "keep.txt").write_text("someone's files\n")
    return output


def _output_under_a_file(runs: Path) -> Path:
    (runs / "afile").write_text("not a folder\n")
    return runs / "afile" / "imported"


# id -> f(inputs, runs folder) -> (import arguments, --output, words the message must hold)
BAD_IMPORTS = {
    "not_a_checkpoint": lambda f, runs: (
        [f["jpeg"]],
        runs / "imported",
        [str(f["jpeg"]), "not a PyTorch checkpoint"],
    ),
    "truncated": lambda f, runs: (
        [f["truncated"]],
        runs / "imported",
        [str(f["truncated"]), "truncated"],
    ),
    "wrong_arch": lambda f, runs: (
        [f["other_arch"], "--arch", ARCH],
        runs / "imported",
        [str(f["other_arch"]), f"not a {ARCH} checkpoint", "missing keys", "unexpected keys"],
    ),
    "all_weights_nan": lambda f, runs: (
        [f["all_nan"], "--arch", MOBILENET],
        runs / "imported",
        [str(f["all_nan"]), f"tensor {FIRST_TENSOR} holds NaN or infinite values"],
    ),
    "one_weight_inf": lambda f, runs: (
        [f["one_inf"], "--arch", MOBILENET],
        runs / "imported",
        [str(f["one_inf"]), f"tensor {BAD_TENSOR} holds NaN or infinite values"],
    ),
    "unknown_arch": lambda f, runs: (
        [f["coco"], "--arch", "fasterrcnn_resnet18_fpn"],
        runs / "imported",
        ["--arch", "fasterrcnn_resnet18_fpn", ARCH],
    ),
    "unknown_source": lambda f, runs: (
        [f["coco"], "--from", "detectron2"],
        runs / "imported",
        ["--from", "detectron2", "torchvision"],
    ),
    "missing_file": lambda f, runs: (
        [runs / "nope.pth"],
        runs / "imported",
        [str(runs / "nope.pth")],
    ),
    "whole_pickled_module": lambda f, runs: (
        [f["module"]],
        runs / "imported",
        [str(f["module"]), "refusing to load"],
    ),
    "classes_count_differs": lambda f, runs: (
        [f["coco"], "--classes", f["three_names"]],
        runs / "imported",
        ["--classes", str(f["three_names"]), "3 classes", "90"],
    ),
    "classes_file_missing": lambda f, runs: (
        [f["coco"], "--classes", runs / "names.txt"],
        runs / "imported",
        ["--classes", str(runs / "names.txt")],
    ),
    "not_coco_without_classes": lambda f, runs: (
        [f["finetuned"]],
        runs / "imported",
        [str(f["finetuned"]), "3 classes", "--classes"],
    ),
    "output_exists": lambda f, runs: (
        [f["coco"]],
        _existing_output(runs),
        ["--output", str(runs / "imported"), "already exists"],
    ),
    "output_under_a_file": lambda f, runs: (
        [f["coco"]],
        _output_under_a_file(runs),
        ["--output", str(runs / "afile")],
    ),
}


@pytest.mark.parametrize("case", list(BAD_IMPORTS))
def test_bad_import_exits_1_with_one_line_and_leaves_nothing(case, inputs, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    args, output, words = BAD_IMPORTS[case](inputs, runs)
    before = _tree(runs)
    code = kdetect("checkpoint", "import", *args, "--output", output)
    captured = capsys.readouterr()
    assert code == 1, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert captured.out == ""
    # Nothing at --output (an existing folder untouched), no .imported.importing-* beside it.
    assert _tree(runs) == before


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_imports_and_predicts_through_the_cli(arch, every_arch, tmp_path):
    """``checkpoint import --arch ARCH`` then ``predict`` on the produced run, for every
    architecture ``--arch`` accepts; the run's recipe rebuilds the architecture."""
    run = tmp_path / "runs" / arch
    assert kdetect("checkpoint", "import", every_arch[arch], "--arch", arch, "--output", run) == 0
    assert_imported_run(run, arch, ARCHITECTURES[arch], PHOTO, tmp_path / "out.jsonl")


# --------------------------------------------------------------------------------------------
# 2. A checkpoint fine-tuned in torchvision on other classes.
# --------------------------------------------------------------------------------------------


def test_finetuned_checkpoint_imports_with_its_class_names(inputs, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("raccoon\nfox\n\nbadger\n")  # one per line; blank lines are skipped
    run = tmp_path / "runs" / "finetuned"
    args = ("checkpoint", "import", inputs["finetuned"], "--classes", names, "--output", run)
    assert kdetect(*args) == 0
    assert str(run) in " ".join(capsys.readouterr().out.split())
    assert sorted(p.name for p in run.parent.iterdir()) == ["finetuned"]  # no staging left
    assert sorted(p.name for p in run.iterdir()) == [
        "classes.json",
        "kdetect.json",
        "model.keras",
        "recipe.yaml",
    ]
    assert json.loads((run / "classes.json").read_text()) == {
        "classes": ["raccoon", "fox", "badger"]
    }
    with zipfile.ZipFile(run / "model.keras") as archive:
        config = json.loads(archive.read("config.json"))["config"]
    assert config["num_classes"] == 3 and config["backbone"] == "torchvision_resnet50"
    meta = json.loads((run / "kdetect.json").read_text())
    assert meta["status"] == "imported" and meta["arch"] == ARCH
    assert meta["weights_sha256"] == _sha256(inputs["finetuned"])


def test_checkpoint_saved_with_torchvision_references_lr_scheduler(inputs, tmp_path, capsys):
    run = tmp_path / "finetuned"
    args = ("--classes", inputs["three_names"], "--output", run)
    code = kdetect("checkpoint", "import", inputs["finetuned_with_scheduler"], *args)
    assert code == 0, capsys.readouterr().err
    assert json.loads((run / "classes.json").read_text())["classes"] == ["raccoon", "fox", "badger"]


# --------------------------------------------------------------------------------------------
# 3. The imported COCO run with every command.
# --------------------------------------------------------------------------------------------


def test_checkpoint_info_describes_the_imported_run(coco_run, inputs, capsys):
    assert kdetect("checkpoint", "info", coco_run, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "run" and info["model"] == str(coco_run / "model.keras")
    assert info["classes"] == coco_class_names() and info["classes"][:2] == ["person", "bicycle"]
    assert info["epochs"] == 0 and info["last_epoch"] is None
    meta = info["meta"]
    assert (meta["status"], meta["source"], meta["arch"]) == ("imported", "torchvision", ARCH)
    assert meta["weights"] == str(inputs["coco"])
    assert meta["weights_sha256"] == _sha256(inputs["coco"])
    model = info["recipe"]["model"]
    assert model["backbone"] == "torchvision_resnet50" and model["resize_mode"] == "min_max"
    assert model["roi_align_aligned"] is False and model["frozen_batch_norm"] is True

    assert kdetect("checkpoint", "info", coco_run) == 0
    table = " ".join(capsys.readouterr().out.split())
    for words in ("status │ imported", "torchvision_resnet50 (fpn: True)", "person, bicycle, car"):
        assert words in table, words


def test_predict_names_coco_classes(predicted):
    names = coco_class_names()
    (line,) = predicted
    assert line["file"] == str(PHOTO) and (line["width"], line["height"]) == (600, 304)
    objects = line["objects"]
    assert objects, "the reference model detects something above the default --min-score"
    for obj in objects:
        assert obj["label"] == names[obj["label_id"]]
        assert MIN_SCORE <= obj["score"] <= 1.0
        x1, y1, x2, y2 = obj["bbox"]
        assert 0 <= x1 < x2 <= 600 and 0 <= y1 < y2 <= 304
    scores = [obj["score"] for obj in objects]
    assert scores == sorted(scores, reverse=True)
    assert any(not obj["label"].startswith("N/A") for obj in objects)


def _relabelled_voc(root: Path, ids: list[str], new_name: str) -> int:
    """A VOC folder with ``ids`` from the raccoon set, each raccoon renamed ``new_name``;
    returns the number of boxes."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    boxes = 0
    for stem in ids:
        xml = (RACCOON / "Annotations" / f"{stem}.xml").read_text()
        boxes += xml.count("<name>raccoon</name>")
        (root / "Annotations" / f"{stem}.xml").write_text(
            xml.replace("<name>raccoon</name>", f"<name>{new_name}</name>")
        )
        (root / "JPEGImages" / f"{stem}.jpg").symlink_to(RACCOON / "JPEGImages" / f"{stem}.jpg")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids) + "\n")
    return boxes


def test_evaluate_on_raccoon_says_the_class_is_not_coco(coco_run, tmp_path, capsys):
    """COCO has no raccoon: the split cannot be read with the model's class list."""
    metrics = tmp_path / "metrics.json"
    args = ("--data", RACCOON, "--split", "val", "--output", metrics)
    assert kdetect("evaluate", coco_run, *args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown class 'raccoon'" in lines[0], lines
    assert not metrics.exists() and not (coco_run / "metrics.json").exists()


def test_evaluate_scores_a_coco_class(coco_run, tmp_path):
    """A raccoon photo relabelled as COCO's nearest class, bear: the model is scored on it."""
    data = tmp_path / "bears"
    boxes = _relabelled_voc(data, [PHOTO.stem], "bear")
    out = tmp_path / "metrics.json"
    args = ("--data", data, "--split", "val", "--metric", "voc07", "--output", out)
    assert kdetect("evaluate", coco_run, *args) == 0
    metrics = json.loads(out.read_text())
    assert metrics["metric"] == "voc07" and metrics["num_images"] == 1
    assert metrics["num_detections"] > 0
    assert metrics["num_ground_truth"]["bear"] == boxes > 0
    assert 0.0 <= metrics["per_class"]["bear"] <= 1.0
    assert metrics["mAP"] == pytest.approx(metrics["per_class"]["bear"])
    assert set(metrics["per_class"]) == set(coco_class_names())
    assert all(v is None for k, v in metrics["per_class"].items() if k != "bear")
    assert not (coco_run / "metrics.json").exists()


def test_saved_model_export_matches_predict(coco_run, predicted, photo, tmp_path_factory):
    import tensorflow as tf

    out = tmp_path_factory.mktemp("export") / "saved_model"
    assert kdetect("export", coco_run, "--format", "saved_model", "--output", out) == 0
    extra = out / "assets.extra"
    assert json.loads((extra / "classes.json").read_text())["classes"] == coco_class_names()
    assert 'id: 1\n  name: "person"' in (extra / "label_map.pbtxt").read_text()
    loaded = tf.saved_model.load(str(out))
    assert {"serving_default", "encoded_image_string_tensor", "image_tensor"} <= set(
        loaded.signatures
    )
    result = loaded.signatures["serving_default"](images=tf.constant([_png(photo)]))
    count = int(result["num_detections"].numpy()[0])
    height, width = photo.shape[:2]
    boxes = result["detection_boxes"].numpy()[0][:count]  # normalised [ymin, xmin, ymax, xmax]
    boxes = boxes[:, [1, 0, 3, 2]] * np.array([width, height, width, height], np.float32)
    exported = [
        {"bbox": box.tolist(), "label_id": int(label) - 1, "score": float(score)}
        for box, label, score in zip(
            boxes,
            result["detection_classes"].numpy()[0][:count],
            result["detection_scores"].numpy()[0][:count],
            strict=True,
        )
    ]
    assert count > len(predicted[0]["objects"])  # the export keeps the low scores too
    _assert_same_objects(exported, predicted[0]["objects"])


def test_serve_answers_with_coco_detections(coco_run, coco_model, predicted, photo):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from kdetect.apps.serve import create_app

    model, classes = coco_model
    with TestClient(create_app(model, classes, run=coco_run)) as client:
        info = client.get("/api/model").json()
        assert info["classes"] == coco_class_names() and info["backbone"] == "torchvision_resnet50"
        response = client.post(
            "/api/predict",
            files={"image": ("raccoon.png", _png(photo), "image/png")},
            data={"min_score": str(MIN_SCORE)},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (600, 304)
    for obj in body["objects"]:
        assert obj["label"] == classes[obj["label_id"]]
    _assert_same_objects(body["objects"], predicted[0]["objects"])


# --------------------------------------------------------------------------------------------
# 4. Fine-tuning from the imported run.
# --------------------------------------------------------------------------------------------

# Tiny: six steps of two 256x320 images, no validation. The reference's weights are random, so
# its gradients are far larger than a COCO-trained model's: the recipe's lr 0.005 (no clipping)
# diverges within three steps; 0.002 with the global norm clipped at 10 decreases steadily.
FINETUNE_TINY = [
    f"data.root={RACCOON}",
    "model.image_size=[256,320]",
    "data.batch_size=2",
    "data.val_split=null",
    "data.shuffle=false",
    "data.augment.enabled=false",
    "train.epochs=2",
    "train.steps_per_epoch=3",
    "train.optimizer.lr=0.002",
    "train.optimizer.global_clipnorm=10",
    "train.schedule.name=constant",
    "train.schedule.warmup_steps=0",
    "train.checkpoint.every_epochs=null",
    "train.checkpoint.best=none",
    "train.tensorboard=false",
    "eval.every=0",
    "eval.samples=0",
]


def test_finetune_from_the_imported_run(coco_run, tmp_path, capsys):
    from kdetect.runs import load_model

    run = tmp_path / "raccoon"
    overrides = [f"train.init_from={coco_run}", *FINETUNE_TINY]
    assert kdetect("train", FINETUNE_RECIPE, "--run-dir", run, *set_args(overrides)) == 0
    log = capsys.readouterr().err

    with (run / "history.csv").open() as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    print("loss per epoch:", losses)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    assert losses[1] < 0.6 * losses[0], losses

    tuned, classes = load_model(run)
    assert classes == ["raccoon"]
    # Only the class-dependent box predictor is re-initialised; the stem and stage 1 (frozen
    # batch norm everywhere) keep the imported values.
    frozen = assert_finetuned_from(
        log, coco_run, tuned, ["box_predictor/bbox_pred", "box_predictor/cls_score"]
    )
    assert frozen and len(frozen) == len(tuned.non_trainable_weights)
