"""``kdetect checkpoint import``: a torchvision checkpoint as a normal kdetect run directory.

The run holds ``model.keras``, ``classes.json``, a ``recipe.yaml`` that rebuilds the
architecture (so ``train --set train.init_from=RUN_DIR`` and ``evaluate --data`` work) and
``kdetect.json`` saying where the weights came from. It is written in a temporary sibling folder
and renamed into place (:func:`kdetect.plumbing.paths.atomic_path`), so a failed import leaves
nothing at ``output``.

It writes a run directory, so it sits with the products, above :mod:`kdetect.config`;
:mod:`kdetect.pretrained` (which the model imports) only reads checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from kdetect.config import dump, load
from kdetect.config.builders import model_section
from kdetect.data.readers.common import parse_classes
from kdetect.models.registry import architecture_options, architecture_type, model_class
from kdetect.plumbing.errors import CheckpointError
from kdetect.plumbing.paths import atomic_path, check_kind, check_not_input
from kdetect.pretrained.coco import coco_class_names
from kdetect.runs import (
    CLASSES_FILE,
    MODEL_FILE,
    PACK_META,
    RECIPE_FILE,
    write_classes,
)

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

    Class names: ``classes`` (comma-separated, a ``classes.json`` or one name per line; see
    :func:`~kdetect.data.readers.common.parse_classes`) when given, else COCO's
    names for a 90-class (COCO) checkpoint; any other class count needs ``classes``.
    """
    if source not in SOURCES:
        raise CheckpointError(f"source: unknown source {source!r}; supported: {', '.join(SOURCES)}")
    weights, output = Path(weights), Path(output)
    check_not_input(output, [weights, classes], "--output", replaces=True)  # nor in a run
    check_kind(output, "folder", "--output")  # not a file, nor below one
    if output.is_dir() and any(output.iterdir()):
        raise CheckpointError(f"output: {output} already exists; choose a new run directory")
    names = parse_classes(classes)
    model = model_class(architecture_type(arch)).from_torchvision(weights, arch=arch)
    if names is None:
        if model.num_classes != len(coco_class_names()):
            raise CheckpointError(
                f"{weights}: the checkpoint predicts {model.num_classes} classes, not COCO's 90; "
                "pass their names with --classes (a file or a comma-separated list)"
            )
        names = coco_class_names()
    if len(names) != model.num_classes:
        raise CheckpointError(
            f"classes: {classes} names {len(names)} classes but the checkpoint predicts "
            f"{model.num_classes}"
        )
    try:
        with atomic_path(output) as staging:  # renamed onto output only once complete
            staging.mkdir()
            model.save(staging / MODEL_FILE)
            write_classes(staging / CLASSES_FILE, names)
            recipe = load(architecture_recipe(arch, output.name), check_paths=False)
            dump(recipe, staging / RECIPE_FILE)
            meta = {
                "status": "imported",
                "source": source,
                "arch": arch,
                "weights": str(weights),
                "weights_sha256": _sha256(weights),
            }
            (staging / PACK_META).write_text(json.dumps(meta, indent=2) + "\n")
    except OSError as exc:
        raise CheckpointError(f"output: cannot write {output} ({exc.strerror or exc})") from None
    return output


def architecture_recipe(arch: str, name: str) -> dict:
    """A recipe mapping that rebuilds ``arch`` (the model section), for an imported run."""
    return {
        "name": name,
        "model": model_section(architecture_options(arch), architecture_type(arch)),
        "data": {"format": "coco", "batch_size": 2},
    }
