"""Read a recipe file, apply ``--set key=value`` overrides, validate, and write it back.

Overrides use dotted keys and YAML typing for the value, so ``train.epochs=3`` sets an integer,
``model.freeze=null`` sets ``None`` and ``model.image_size=[256,256]`` sets a list.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from kdetect.backbones.names import BACKBONE_MODEL_TYPE, checked_anchor_sizes, rpn_levels
from kdetect.config.builders import backbone_of, check_options, image_transform
from kdetect.config.schema import Recipe, path_fields
from kdetect.config.typecheck import from_dict, to_dict
from kdetect.plumbing.errors import CheckpointError, RecipeError
from kdetect.plumbing.parsing import compose_yaml, read_text
from kdetect.plumbing.paths import write_text
from kdetect.runs import model_file
from kdetect.runs.files import RECIPE_FILE


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into ``(["a", "b", "c"], parsed_value)``."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, _, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise RecipeError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(
            f"override {key}: value {raw!r} is not valid YAML ({exc.problem})"
        ) from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Set every ``KEY=VALUE`` of ``overrides`` in the nested mapping ``data`` (in place)."""
    for text in overrides or []:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                dotted = ".".join(parts[: i + 1])
                raise RecipeError(f"override {'.'.join(parts)}: {dotted} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _check_duplicate_keys(node: yaml.Node, path: Path, prefix: str = "") -> None:
    """Refuse a key given twice in one mapping (YAML itself keeps the last one silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise RecipeError(
                        f"{path}: line {line}: duplicate key {dotted} (first given on line "
                        f"{seen[key]})"
                    )
                seen[key] = line
            _check_duplicate_keys(value_node, path, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, path, f"{prefix}[{i}]")


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML recipe file into a mapping, with one-line errors.

    An empty (or comments-only) file, a file that is not UTF-8 text, a key given twice and
    aliases that expand too far (:func:`kdetect.plumbing.parsing.compose_yaml`) are errors, not a
    default recipe, a silently replaced value or a hang.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    text = read_text(path, "the recipe", RecipeError)
    try:
        node = compose_yaml(text, str(path), RecipeError)  # refuses alias bombs
        if node is not None:
            _check_duplicate_keys(node, path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}:{where} invalid YAML: {problem}") from exc
    if data is None or data == {}:
        raise RecipeError(
            f"{path}: the recipe is empty; see recipes/shapes.yaml for one to start from"
        )
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping with model/data/train/eval")
    return data


def _check_anchors(model) -> None:
    """The model's own rule for ``anchor_sizes`` (one list per RPN level of the backbone, all of
    one length), applied before anything is built."""
    if model.anchor_sizes is None:
        return
    try:
        checked_anchor_sizes(
            model.anchor_sizes, model.fpn, rpn_levels(backbone_of(model), model.fpn)
        )
    except ValueError as exc:
        raise RecipeError(f"model.{exc}") from None


def _check_transform(model) -> None:
    """The model's input transform checks its own settings (the frame, the resize rule)."""
    try:
        image_transform(model)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"model: {exc}") from None


def _check_init_from(value: str) -> None:
    try:
        _, _, tmp = model_file(value)
    except CheckpointError as exc:
        reason = str(exc).removeprefix(f"{value}: ")
        raise RecipeError(f"train.init_from: {value}: {reason}") from None
    if tmp is not None:
        tmp.cleanup()


def validate(recipe: Recipe, check_paths: bool = True) -> Recipe:
    """Cross-field checks that single values cannot express; the paths first, before the model
    checks import TensorFlow, so that a wrong path is said at once."""
    data, train, model = recipe.data, recipe.train, recipe.model
    if check_paths and data.format != "shapes" and not data.root:
        raise RecipeError(
            f"data.root: required for data.format {data.format} (--set data.root=PATH)"
        )
    if check_paths:
        for key, (section, name) in _local_paths(recipe).items():
            value = getattr(section, name)
            if not Path(value).exists():
                what = "file" if key == "model.backbone_weights" else "path"
                raise RecipeError(f"{key}: {what} not found: {value}")
        if data.format in ("voc", "tfrecord") and not Path(data.root).is_dir():
            raise RecipeError(
                f"data.root: {data.root} is a file; data.format {data.format} needs the "
                "dataset folder"
            )
        if train.init_from is not None:
            _check_init_from(train.init_from)
    if model.rpn.bg_iou_thresh > model.rpn.fg_iou_thresh:
        raise RecipeError("model.rpn.bg_iou_thresh: must be <= model.rpn.fg_iou_thresh")
    if model.box.bg_iou_thresh > model.box.fg_iou_thresh:
        raise RecipeError("model.box.bg_iou_thresh: must be <= model.box.fg_iou_thresh")
    if len(model.box.reg_weights) != 4:
        raise RecipeError("model.box.reg_weights: expected 4 values (wx, wy, ww, wh)")
    owner = BACKBONE_MODEL_TYPE.get(model.backbone, model.type) if model.backbone else model.type
    if owner != model.type:
        raise RecipeError(
            f"model.backbone: {model.backbone} is the {owner} model's backbone "
            f"(model.type {owner}), not {model.type}'s"
        )
    if model.type == "faster_rcnn":
        _check_anchors(model)
    check_options(model)
    _check_transform(model)
    low, high = data.augment.scale_range
    if low > high:
        raise RecipeError(
            f"data.augment.scale_range: expected [low, high] with low <= high, "
            f"got {data.augment.scale_range}"
        )
    if data.classes is not None:
        if not data.classes:
            raise RecipeError("data.classes: must name at least one class (or be null)")
        dupes = sorted({c for c in data.classes if data.classes.count(c) > 1})
        if dupes:
            raise RecipeError(f"data.classes: duplicate class {dupes[0]!r}")
    milestones = train.schedule.milestones
    if milestones != sorted(milestones):
        raise RecipeError(f"train.schedule.milestones: must increase, got {milestones}")
    if train.steps_per_epoch is not None and train.steps_per_epoch <= 0:
        raise RecipeError("train.steps_per_epoch: must be > 0 (or null)")
    if train.validation_steps is not None and train.validation_steps <= 0:
        raise RecipeError("train.validation_steps: must be > 0 (or null)")
    if train.checkpoint.best == "map" and recipe.eval.every == 0:
        raise RecipeError("train.checkpoint.best: `map` needs eval.every > 0")
    if train.checkpoint.best in ("val_loss", "map") and data.val_split is None:
        raise RecipeError(
            f"train.checkpoint.best: `{train.checkpoint.best}` needs data.val_split "
            "(or set it to loss or none)"
        )
    return recipe


def _local_paths(recipe: Recipe) -> dict[str, tuple[Any, str]]:
    """``{dotted key: (section, attribute)}`` of the recipe's local paths that are set:
    ``data.root`` (unless the data is built in), ``train.init_from``, a weights file in
    ``model.backbone_weights``."""
    found = {}
    for key in ["model.backbone_weights", *path_fields()]:
        section_name, _, name = key.partition(".")
        section = getattr(recipe, section_name)
        value = getattr(section, name)
        if value in (None, "imagenet") and key == "model.backbone_weights":
            continue
        if value is not None and not (key == "data.root" and recipe.data.format == "shapes"):
            found[key] = (section, name)
    return found


def absolute_paths(recipe: Recipe) -> Recipe:
    """A copy of ``recipe`` whose local paths are absolute (read from the current folder), so
    that a run's ``recipe.yaml`` works from any folder."""
    recipe = copy.deepcopy(recipe)
    for section, name in _local_paths(recipe).values():
        setattr(section, name, os.path.abspath(getattr(section, name)))
    return recipe


def load(
    path: str | os.PathLike | dict[str, Any],
    overrides: list[str] | None = None,
    check_paths: bool = True,
) -> Recipe:
    """Load, override and validate a recipe.

    Args:
        path: a YAML file, a run directory (its ``recipe.yaml``) or an already-parsed mapping.
        overrides: ``["train.epochs=3", ...]`` applied on top of the file.
        check_paths: check that ``data.root``, ``train.init_from`` and a local
            ``model.backbone_weights`` exist.

    Returns:
        The validated :class:`Recipe`; ``recipe.name`` defaults to the file's stem.

    Raises:
        RecipeError: naming the key (and the closest valid one for typos) on any problem.
    """
    name = None
    if isinstance(path, dict):
        data = dict(path)
    else:
        path = Path(path)
        if path.is_dir():
            path = path / RECIPE_FILE
        data = read_yaml(path)
        name = path.stem if path.name != RECIPE_FILE else path.parent.name
    data = apply_overrides(data, list(overrides or []))
    recipe = from_dict(Recipe, data)
    if recipe.name is None:
        recipe.name = name or "recipe"
    return validate(recipe, check_paths=check_paths)


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists (``image_size: [512, 512]``)."""


_Dumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, True)
)


def dump(recipe: Recipe, path: str | os.PathLike | None = None) -> str:
    """Write the fully resolved recipe (every key, defaults included) as YAML; return the text."""
    text = yaml.dump(to_dict(recipe), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    if path is not None:
        write_text(path, text)
    return text
