"""``kdetect checkpoint import``: a torchvision checkpoint as a normal kdetect run directory.

The run holds ``model.keras``, ``classes.json``, a ``recipe.yaml`` that rebuilds the
architecture (so ``train --set train.init_from=RUN_DIR`` and ``evaluate --data`` work) and
``kdetect.json`` saying where the weights came from. It is written in a temporary sibling folder
and renamed into place, so a failed import leaves nothing at ``output``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from kdetect.errors import CheckpointError
from kdetect.models.faster_rcnn import FasterRCNN
from kdetect.pretrained.coco import coco_class_names
from kdetect.pretrained.torchvision import _read_class_names, architecture_recipe
from kdetect.recipes import dump, load
from kdetect.recipes.runs import CLASSES_FILE, MODEL_FILE, PACK_META, RECIPE_FILE, write_classes

SOURCES = ("torchvision",)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_checkpoint(
    weights: str | os.PathLike,
    output: str | os.PathLike,
    arch: str = "fasterrcnn_resnet50_fpn",
    source: str = "torchvision",
    classes: str | os.PathLike | None = None,
) -> Path:
    """Import ``weights`` into a new run directory ``output``; returns its path.

    Class names: ``classes`` (a ``classes.json`` or one name per line) when given, else COCO's
    names for a 90-class (COCO) checkpoint; any other class count needs ``classes``.
    """
    import json

    if source not in SOURCES:
        raise CheckpointError(f"--from: unknown source {source!r}; supported: {', '.join(SOURCES)}")
    weights, output = Path(weights), Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CheckpointError(f"--output: {output} already exists; choose a new run directory")
    ancestor = next((p for p in output.absolute().parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise CheckpointError(f"--output: {ancestor} is a file, not a folder to create {output} in")
    names = _read_class_names(classes) if classes is not None else None
    model = FasterRCNN.from_torchvision(weights, arch=arch)
    if names is None:
        if model.num_classes != len(coco_class_names()):
            raise CheckpointError(
                f"{weights}: the checkpoint predicts {model.num_classes} classes, not COCO's 90; "
                "pass their names with --classes FILE"
            )
        names = coco_class_names()
    if len(names) != model.num_classes:
        raise CheckpointError(
            f"--classes: {classes} names {len(names)} classes but the checkpoint predicts "
            f"{model.num_classes}"
        )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.importing-", dir=output.parent))
    except OSError as exc:
        raise CheckpointError(f"--output: cannot create {output} ({exc.strerror or exc})") from None
    try:
        model.save(staging / MODEL_FILE)
        write_classes(staging / CLASSES_FILE, names)
        dump(load(architecture_recipe(arch, output.name), check_paths=False), staging / RECIPE_FILE)
        meta = {
            "status": "imported",
            "source": source,
            "arch": arch,
            "weights": str(weights),
            "weights_sha256": _sha256(weights),
        }
        (staging / PACK_META).write_text(json.dumps(meta, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's folder is private
        if output.exists():
            output.rmdir()  # an empty folder the user made
        os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
