"""Every single-stage torchvision architecture through ``kdetect checkpoint import`` and what a
user does with the imported run: ``predict`` on a photo, and fine-tuning on new classes with
``train.init_from`` (Faster R-CNN's architectures are covered the same way by
``tests/apps/test_pretrained_cli.py``; resuming each type is in
``tests/engine/test_resume_equality.py``).

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
import math
from pathlib import Path

import pytest

from kdetect.models.registry import MODEL_TYPES, architecture_options
from tests.apps.test_pretrained_cli import CALIBRATION, FINETUNE_TINY, PHOTO, RACCOON
from tests.pretrained_support import assert_finetuned_from, assert_imported_run, photo_arrays
from tests.torch_peer import run_torch
from tests.train_support import kdetect, set_args

HERE = Path(__file__).resolve().parents[1]  # tests/
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
#: Fine-tuning: FINETUNE_TINY (six steps of two raccoon photos at 256 x 320, no validation) on
#: the imported run's own recipe; SSD and SSDlite train at their fixed frames instead. The
#: reference's RetinaNet v1 has no norm in its head towers, whose outputs (RMS ~20) make the new
#: class logits' first focal loss ~1850: at FINETUNE_TINY's lr 0.002 its box loss then climbs
#: tenfold within six steps; at 0.0005 it stays near its start while the total falls.
FINETUNE = [*FINETUNE_TINY, "data.format=voc", "train.optimizer.lr=0.0005"]
#: The dense references calibrate at half torchvision's 800 / 1333 resize (a quarter of the
#: pixels, the same rules): the ResNet50 passes dominate the torch interpreter's time.
DENSE_CALIBRATION = {t: ["--min-size", "400", "--max-size", "667"] for t in ("retinanet", "fcos")}

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
    folder = tmp_path_factory.mktemp("family_imports")
    calibration = photo_arrays(folder, CALIBRATION)
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


def test_imports_and_predicts_through_the_cli(imported, tmp_path):
    """The run names the architecture, its recipe rebuilds it, and ``predict`` finds COCO
    classes inside the photo."""
    arch, run = imported
    assert_imported_run(run, arch, architecture_options(arch), PHOTO, tmp_path / "out.jsonl")


def test_finetunes_from_the_import_on_new_classes(imported, tmp_path, capsys):
    """``train RUN/recipe.yaml --set train.init_from=RUN`` on the raccoon photos: every variable
    but the class predictors comes from the import, the losses stay finite and the frozen
    variables keep the imported values."""
    from kdetect.runs import load_model

    arch, source_run = imported
    model_type = ARCHS[arch]
    target = tmp_path / "raccoon"
    overrides = [*FINETUNE, f"train.init_from={source_run}"]
    if model_type in ("ssd", "ssdlite"):  # the architecture's fixed frame
        overrides = [o for o in overrides if not o.startswith("model.image_size=")]
    capsys.readouterr()
    recipe = source_run / "recipe.yaml"
    assert kdetect("train", recipe, "--run-dir", target, *set_args(overrides)) == 0
    log = capsys.readouterr().err

    with (target / "history.csv").open() as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    print(f"{arch}: loss per epoch {losses}")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses

    tuned, classes = load_model(target)
    assert classes == ["raccoon"] and tuned.TYPE == model_type
    frozen = assert_finetuned_from(log, source_run, tuned, CLASS_PREDICTORS[model_type])
    # the ResNets' stem and stage 1 (torchvision's default trainable_backbone_layers=3)
    assert bool(frozen) == ("freeze" in architecture_options(arch)), sorted(frozen)[:5]
