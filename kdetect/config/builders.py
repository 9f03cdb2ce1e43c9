"""A recipe's model section as a detector's keyword arguments, and back.

This is the one place where recipe values become a model's keyword arguments; the model never
sees a recipe. (The datasets, optimizer and strategy of a recipe are built by the training
engine, :mod:`kdetect.engine.builders`.)
"""

from __future__ import annotations

import inspect
from typing import Any

from kdetect.config.schema import ModelConfig, Recipe
from kdetect.models.registry import model_class  # light: no TensorFlow
from kdetect.plumbing.errors import RecipeError, did_you_mean


def transform_settings(model: ModelConfig) -> dict[str, Any]:
    """The input-transform arguments of a recipe's model section (``FasterRCNN``'s and
    ``ImageTransform``'s names)."""
    return {
        "image_size": tuple(model.image_size),
        "resize_mode": model.resize_mode,
        "min_size": model.min_size,
        "max_size": model.max_size,
    }


def image_transform(model: ModelConfig):
    """The :class:`~kdetect.models.transform.ImageTransform` the recipe's model will have, for
    the data pipeline (built before the model, which needs the class count)."""
    from kdetect.models.transform import ImageTransform

    return ImageTransform(**transform_settings(model))


#: Model-section keys that every type takes when its constructor has them.
SHARED_KEYS = (
    "backbone",
    "backbone_weights",
    "freeze",
    "frozen_batch_norm",
    "batch_norm_epsilon",
    "fpn_channels",
    "image_size",
    "resize_mode",
    "min_size",
    "max_size",
    "anchor_sizes",
)


def constructor_arguments(model_type: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments of ``model_type``'s class (its settings, with their defaults)."""
    skip = {"self", "num_classes", "seed", "kwargs"}
    parameters = inspect.signature(model_class(model_type).__init__).parameters
    return {name: p for name, p in parameters.items() if name not in skip}


def backbone_of(model: ModelConfig) -> str:
    """The recipe's backbone: ``model.backbone``, or its type's default when unset."""
    if model.backbone is not None:
        return model.backbone
    return constructor_arguments(model.type)["backbone"].default


def check_options(model: ModelConfig) -> None:
    """``model.options`` against the type's constructor: known names, values of the default's
    kind (a number, a flag, a name, a list); Faster R-CNN takes its settings as keys."""
    if model.type == "faster_rcnn":
        if model.options:
            raise RecipeError(
                "model.options: faster_rcnn's settings are model keys and the model.rpn and "
                "model.box sections (docs/recipes.md)"
            )
        return
    arguments = constructor_arguments(model.type)
    for name, value in model.options.items():
        key = f"model.options.{name}"
        if name in SHARED_KEYS:
            raise RecipeError(f"{key}: set it as model.{name} (shared by every model type)")
        if name not in arguments:
            raise RecipeError(
                f"{key}: not a setting of model.type {model.type}"
                f"{did_you_mean(name, arguments)}; settings: {', '.join(arguments)}"
            )
        default = arguments[name].default
        if default is inspect.Parameter.empty or default is None or value is None:
            continue
        if not _same_kind(value, default):
            raise RecipeError(
                f"{key}: expected a value like its default {default!r}, got {value!r}"
            )


def _same_kind(value, default) -> bool:
    """Whether a recipe value fits a constructor default: a flag for a flag, a number for a
    number (an integer where the default is one), a list for a tuple; a name (or a
    ``"default"`` marker) is left to the constructor's own check."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return isinstance(default, float) or isinstance(value, int)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return True


def model_kwargs(model: ModelConfig, num_classes: int, seed: int | None = None) -> dict[str, Any]:
    """The constructor keyword arguments of a recipe's model section (its type's class)."""
    if model.type != "faster_rcnn":
        arguments = constructor_arguments(model.type)
        shared = {k: getattr(model, k) for k in SHARED_KEYS if k in arguments}
        shared["image_size"] = tuple(model.image_size)
        for key in ("anchor_sizes", "backbone"):  # unset: the type's own default
            if shared.get(key, ()) is None:
                del shared[key]
        return {"num_classes": num_classes, **shared, **model.options, "seed": seed}
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "backbone": backbone_of(model),
        "fpn": model.fpn,
        **transform_settings(model),
        "backbone_weights": model.backbone_weights,
        "freeze": model.freeze,
        "aspect_ratios": tuple(model.aspect_ratios),
        "frozen_batch_norm": model.frozen_batch_norm,
        "fpn_channels": model.fpn_channels,
        "fpn_batch_norm": model.fpn_batch_norm,
        "batch_norm_epsilon": model.batch_norm_epsilon,
        "roi_align_aligned": model.roi_align_aligned,
        "seed": seed,
    }
    if model.anchor_sizes is not None:
        kwargs["anchor_sizes"] = tuple(tuple(level) for level in model.anchor_sizes)
    for name, value in vars(model.rpn).items():
        kwargs[f"rpn_{name}"] = value
    for name, value in vars(model.box).items():
        if name == "reg_weights":
            kwargs["bbox_reg_weights"] = tuple(value)
        else:
            kwargs[f"box_{name}"] = value
    return kwargs


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def model_section(kwargs: dict[str, Any], model_type: str = "faster_rcnn") -> dict[str, Any]:
    """The recipe ``model`` mapping of a type's constructor arguments (the inverse of
    :func:`model_kwargs`). Faster R-CNN: ``rpn_*`` under ``rpn``, ``box_*`` and
    ``bbox_reg_weights`` under ``box``; another type: the shared keys, the rest under
    ``options``. Tuples become lists."""
    if model_type != "faster_rcnn":
        section: dict[str, Any] = {"type": model_type}
        options = {}
        for key, value in kwargs.items():
            (section if key in SHARED_KEYS else options)[key] = _plain(value)
        return {**section, "options": options} if options else section
    section = {}
    rpn: dict[str, Any] = {}
    box: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key.startswith("rpn_"):
            rpn[key.removeprefix("rpn_")] = _plain(value)
        elif key == "bbox_reg_weights":
            box["reg_weights"] = _plain(value)
        elif key.startswith("box_"):
            box[key.removeprefix("box_")] = _plain(value)
        else:
            section[key] = _plain(value)
    if rpn:
        section["rpn"] = rpn
    if box:
        section["box"] = box
    return section


def build_model(recipe: Recipe, num_classes: int):
    """A new, uncompiled detector of the recipe's ``model.type``."""
    kwargs = model_kwargs(recipe.model, num_classes, recipe.train.seed)
    try:
        return model_class(recipe.model.type)(**kwargs)
    except (TypeError, ValueError) as exc:  # the model checks its settings (levels, sizes...)
        raise RecipeError(f"model: {exc}") from None
