"""Every single-stage torchvision architecture through ``kdetect checkpoint import`` and what a
user does with the imported run: ``predict`` on a photo, and fine-tuning on new classes with
``train.init_from`` (Faster R-CNN's architectures are covered the same way by
``tests/test_pretrained_cli.py``; resuming each type is in ``tests/test_resume_equality.py``).

torchvision runs in its own interpreter (``tests/torch_peer.py``): one interpreter runs the
dense references' ``make`` (``tests/torchvision_dense_reference.py``: RetinaNet v1 and v2, FCOS)
and the SSD references' (``tests/torchvision_ssd_reference.py``: SSD300, SSDlite), each a random
COCO-sized model (91 labels) made non-trivial and saved as its published file is laid out.

ResNet50 at torchvision's 800-pixel scale takes seconds per image on a CPU, so one photo is
predicted per architecture and fine-tuning takes six steps of two small images (the dense types
at 256 x 320, SSD and SSDlite at their fixed frames).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from kdetect.models.registry import MODEL_TYPES, architecture_options
from kdetect.pretrained.coco import coco_class_names
from tests.test_pretrained_cli import CALIBRATION, FINETUNE_TINY, PHOTO, RACCOON
from tests.torch_peer import run_torch
from tests.train_support import kdetect, set_args

HERE = Path(__file__).parent
REFERENCES = {  # the torch script that makes each model type's checkpoints
    "retinanet": HERE / "torchvision_dense_reference.py",
    "fcos": HERE / "torchvision_dense_reference.py",
    "ssd": HERE / "torchvision_ssd_reference.py",
    "ssdlite": HERE / "torchvision_ssd_reference.py",
}
ARCHS = {arch: name for name in REFERENCES for arch in MODEL_TYPES[name].architectures}
#: The class-dependent variables of each type: the only ones fine-tuning on new classes
#: re-initialises (RetinaNet and FCOS: the class logits conv; SSD and SSDlite: each map's class
#: predictor, SSDlite's the pointwise projection after its depthwise conv).
CLASS_PREDICTORS = {
    "retinanet": ["head/cls_logits"],
    "fcos": ["head/cls_logits"],
    "ssd": [f"head/cls_{level}" for level in range(6)],
    "ssdlite": [f"head/cls_{level}_proj" for level in range(6)],
}
#: Fine-tuning: FINETUNE_TINY (six steps of two raccoon photos, no validation) on the imported
#: run's own recipe; the dense types train at 256 x 320 (the min_max rule of a smaller frame),
#: SSD and SSDlite at their fixed frames. The reference's RetinaNet v1 has no norm in its head
#: towers, whose outputs (RMS ~20) make the new class logits' first focal loss ~1850: at
#: FINETUNE_TINY's lr 0.002 its box loss then climbs tenfold within six steps; at 0.0005 it
#: stays near its start while the total falls.
FINETUNE = [*FINETUNE_TINY, "data.format=voc", "train.optimizer.lr=0.0005"]
#: The dense references calibrate at half torchvision's 800 / 1333 resize (a quarter of the
#: pixels, the same rules): the ResNet50 passes dominate the torch interpreter's time.
DENSE_CALIBRATION = {t: ["--min-size", "400", "--max-size", "667"] for t in ("retinanet", "fcos")}
DENSE_FRAME = "model.image_size=[256,320]"

# Runs several torch scripts' ``main`` in one interpreter: argv = SCRIPT ARGS... ++ SCRIPT ...
RUN_SCRIPTS = """
import runpy, sys
groups = [[]]
for word in sys.argv[1:]:
    groups.append([]) if word == "++" else groups[-1].append(word)
for script, *args in groups:
    runpy.run_path(script)["main"](args)
"""

pytestmark = pytest.mark.skipif(
    not (RACCOON / "JPEGImages").is_dir(), reason="../shared/data/raccoon not available"
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A non-trivial COCO checkpoint (91 labels) of every single-stage architecture, all made by
    one torch interpreter: each reference script's ``make`` commands chained with "+"."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("family_imports")
    calibration = []
    for name in CALIBRATION:
        with Image.open(RACCOON / "JPEGImages" / f"{name}.jpg") as image:
            np.save(folder / f"{name}.npy", np.asarray(image.convert("RGB")))
        calibration.append(folder / f"{name}.npy")
    files, chains = {}, {}
    for arch, model_type in ARCHS.items():
        files[arch] = folder / f"{arch}.pth"
        chain = chains.setdefault(REFERENCES[model_type], [])
        # v1's COCO_V1 file predates torchvision 0.13 and has its old module names
        legacy = ["--legacy-names"] if arch == "retinanet_resnet50_fpn" else []
        chain += [*(["+"] if chain else []), "make", arch, files[arch], *legacy]
        chain += ["--calibrate", *calibration, *DENSE_CALIBRATION.get(model_type, [])]
    args = []
    for script, chain in chains.items():
        args += [*(["++"] if args else []), script, *chain]
    run_torch(RUN_SCRIPTS, *args, timeout=900)
    return files


@pytest.fixture(scope="module", params=list(ARCHS))
def imported(request, checkpoints, tmp_path_factory) -> tuple[str, Path]:
    """``(arch, run)``: the architecture's checkpoint imported through the CLI."""
    arch = request.param
    run = tmp_path_factory.mktemp("imported") / arch
    args = ("--from", "torchvision", "--arch", arch, "--output", run)
    assert kdetect("checkpoint", "import", checkpoints[arch], *args) == 0
    return arch, run


def _plain(options: dict) -> dict:
    """``options`` with tuples as lists (as the recipe's YAML holds them)."""
    return json.loads(json.dumps(options))


def test_imports_and_predicts_through_the_cli(imported, tmp_path):
    """The run names the architecture, its recipe rebuilds it, and ``predict`` finds COCO
    classes inside the photo."""
    from kdetect.recipes import load
    from kdetect.recipes.builders import model_kwargs

    arch, run = imported
    assert json.loads((run / "kdetect.json").read_text())["arch"] == arch
    kwargs = model_kwargs(load(run / "recipe.yaml", check_paths=False).model, 90)
    options = architecture_options(arch)
    assert _plain({key: kwargs[key] for key in options}) == _plain(options)

    out = tmp_path / "out.jsonl"
    assert kdetect("predict", run, PHOTO, "--min-score", "0.05", "--output", out) == 0
    (line,) = [json.loads(text) for text in out.read_text().splitlines() if text.strip()]
    assert (line["width"], line["height"]) == (600, 304)
    assert line["objects"], "the reference model detects something above 0.05"
    for obj in line["objects"]:
        assert obj["label"] == coco_class_names()[obj["label_id"]]
        x1, y1, x2, y2 = obj["bbox"]
        assert 0 <= x1 <= x2 <= 600 and 0 <= y1 <= y2 <= 304


def test_finetunes_from_the_import_on_new_classes(imported, tmp_path, capsys):
    """``train RUN/recipe.yaml --set train.init_from=RUN`` on the raccoon photos: every variable
    but the class predictors comes from the import, the losses stay finite and the frozen
    variables keep the imported values."""
    from kdetect.recipes.training import transfer_weights
    from kdetect.runs import load_model

    arch, source_run = imported
    model_type = ARCHS[arch]
    target = tmp_path / "raccoon"
    overrides = [*FINETUNE, f"train.init_from={source_run}"]
    if model_type in ("retinanet", "fcos"):
        overrides.append(DENSE_FRAME)
    else:  # the fixed frame of the architecture
        overrides = [o for o in overrides if not o.startswith("model.image_size=")]
    recipe = source_run / "recipe.yaml"
    capsys.readouterr()
    assert kdetect("train", recipe, "--run-dir", target, *set_args(overrides)) == 0
    log = " ".join(capsys.readouterr().err.split())
    found = re.search(
        r"initialised (\d+) of (\d+) variables from (\S+) \((\d+) re-initialised\)", log
    )
    assert found, log
    copied, total, source_path, reinitialised = found.groups()
    assert source_path == str(source_run)

    with (target / "history.csv").open() as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    print(f"{arch}: loss per epoch {losses}")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses

    source, _ = load_model(source_run)
    tuned, classes = load_model(target)
    assert classes == ["raccoon"] and tuned.TYPE == model_type
    assert len(tuned.weights) == len(source.weights) == int(total)

    def path_of(model, variable) -> str:  # as transfer_weights matches them
        return variable.path.removeprefix(f"{model.name}/")

    # Frozen variables (never trained, nor statistics that training updates) are still the
    # imported ones: the frozen stem and stage of the ResNets (torchvision's default
    # trainable_backbone_layers=3), with their batch norm.
    imported_values = {path_of(source, v): v for v in source.weights}
    trainable = {path_of(tuned, v) for v in tuned.trainable_weights}
    frozen = {
        name: variable
        for variable in tuned.non_trainable_weights
        if not _updated_statistic(name := path_of(tuned, variable), trainable)
    }
    assert bool(frozen) == ("freeze" in architecture_options(arch)), sorted(frozen)[:5]
    for name, variable in frozen.items():
        np.testing.assert_array_equal(variable.numpy(), imported_values[name].numpy(), err_msg=name)
    # The variables left out are the class-dependent predictors', and only those.
    done, skipped = transfer_weights(source, tuned)
    assert done == int(copied) and len(skipped) == int(reinitialised)
    assert sorted(path.removeprefix(f"{tuned.name}/") for path in skipped) == sorted(
        f"{layer}/{name}" for layer in CLASS_PREDICTORS[model_type] for name in ("bias", "kernel")
    )


def _updated_statistic(path: str, trainable: set[str]) -> bool:
    """Whether ``path`` is a moving statistic of a batch norm that trains (its scale or offset
    is trainable), which training updates though no gradient reaches it."""
    layer, _, name = path.rpartition("/")
    if name not in ("moving_mean", "moving_variance"):
        return False
    return f"{layer}/gamma" in trainable or f"{layer}/beta" in trainable
