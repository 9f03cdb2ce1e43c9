"""Recipe schema, validation messages, overrides and the shipped recipes (no training here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from kdetect.config import dump, iter_keys, load
from kdetect.config.loader import apply_overrides, parse_override
from kdetect.plumbing.errors import RecipeError

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"


def _error(data=None, overrides=None, **kwargs) -> str:
    with pytest.raises(RecipeError) as info:
        load(data if data is not None else {}, overrides, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["shapes", "pascal", "coco", "bccd"])
def test_shipped_recipes_validate(name):
    recipe = load(RECIPES / f"{name}.yaml", check_paths=(name == "shapes"))
    assert recipe.name == name
    assert recipe.model.image_size[0] % 32 == 0
    assert "image_size" not in yaml.safe_load((RECIPES / f"{name}.yaml").read_text())["data"]


def test_shapes_recipe_is_the_cpu_demo():
    recipe = load(RECIPES / "shapes.yaml")
    assert recipe.data.format == "shapes"
    assert recipe.model.backbone == "tiny"
    assert recipe.model.backbone_weights is None


def test_bccd_recipe_needs_its_root_on_the_command_line():
    assert _error(str(RECIPES / "bccd.yaml")).startswith("data.root: required for data.format voc")


def test_unknown_key_suggests_the_closest():
    message = _error({"train": {"epoch": 3}})
    assert message.startswith("train.epoch: unknown key (did you mean train.epochs?)")
    message = _error(overrides=["train.optimizer.momentun=0.8"])
    assert "did you mean train.optimizer.momentum?" in message
    assert "did you mean" not in _error({"zzz": 1})


def test_unknown_key_in_a_file_names_the_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  backbone: tiny\n  bakbone_weights: null\n")
    assert "model.bakbone_weights: unknown key (did you mean model.backbone_weights?)" in _error(
        str(path)
    )


def test_wrong_type_names_key_expected_and_received():
    assert _error(overrides=["train.optimizer.lr=fast"]) == (
        'train.optimizer.lr: expected a number, got "fast"'
    )
    assert _error(overrides=["model.fpn=maybe"]) == (
        'model.fpn: expected true or false (yes/no, 1/0), got "maybe"'
    )
    assert _error(overrides=["model.fpn=2"]) == (
        "model.fpn: expected true or false (yes/no, 1/0), got 2"
    )
    assert _error(overrides=["train.epochs=2.5"]).startswith("train.epochs: expected an integer")
    assert _error(overrides=["train.optimizer=3"]) == "train.optimizer: expected a mapping, got 3"
    assert _error(overrides=["data.classes=[a, 3]"]).startswith(
        "data.classes[1]: expected a string"
    )


@pytest.mark.parametrize(
    "text, value",
    [("true", True), ("YES", True), ("yEs", True), ("1", True), ("'1'", True),
     ("False", False), ("no", False), ("nO", False), ("0", False), ("' off '", None)],
)  # fmt: skip
def test_booleans_are_true_false_yes_no_1_0(text, value):
    if value is None:
        assert "expected true or false" in _error(overrides=[f"data.shuffle={text}"])
    else:
        assert load({}, [f"data.shuffle={text}"]).data.shuffle is value


def test_bad_values():
    assert "did you mean resnet50?" in _error(overrides=["model.backbone=resnet5"])
    assert _error(overrides=["train.epochs=0"]) == "train.epochs: must be > 0, got 0"
    assert "multiples of 32" in _error(overrides=["model.image_size=[100,128]"])
    assert (
        _error(overrides=["model.image_size=[128]"]) == "model.image_size: expected 2 values, got 1"
    )
    assert "train.schedule.milestones: must increase" in _error(
        overrides=["train.schedule.milestones=[5,2]"]
    )
    assert "model.freeze: expected one of stem" in _error(overrides=["model.freeze=stage9"])
    assert "data.classes: duplicate" in _error(overrides=["data.classes=[a,a]"])
    assert "eval.every > 0" in _error(overrides=["train.checkpoint.best=map", "eval.every=0"])


def test_missing_paths(tmp_path):
    message = _error(overrides=["data.format=voc", f"data.root={tmp_path / 'nope'}"])
    assert message.startswith("data.root: path not found:")
    message = _error(overrides=[f"train.init_from={tmp_path / 'old-run'}"])
    assert message.startswith("train.init_from: path not found:")
    message = _error(overrides=["model.backbone_weights=missing.weights.h5"])
    assert message.startswith("model.backbone_weights: file not found")
    assert _error(str(tmp_path / "none.yaml")).endswith("recipe file not found")
    # paths are not checked on request (e.g. reading another machine's run)
    load({}, ["data.format=voc", "data.root=/nowhere"], check_paths=False)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  backbone: tiny\n data: [\n")
    message = _error(str(path))
    assert str(path) in message and "line" in message


def test_overrides_are_yaml_typed_and_create_sections():
    recipe = load(
        {},
        [
            "train.epochs=3",
            "train.optimizer.lr=1e-3",
            "model.image_size=[256, 320]",
            "model.freeze=stage2",
            "model.anchor_sizes=[[16], [32], [64], [128], [256]]",
            "train.steps_per_epoch=null",
            "data.classes=[cat, dog]",
            "name=my-run",
        ],
    )
    assert recipe.train.epochs == 3
    assert recipe.train.optimizer.lr == pytest.approx(1e-3)
    assert recipe.model.image_size == [256, 320]
    assert recipe.model.freeze == "stage2"
    assert recipe.model.anchor_sizes[0] == [16.0]
    assert recipe.train.steps_per_epoch is None
    assert recipe.data.classes == ["cat", "dog"]
    assert recipe.name == "my-run"
    assert parse_override("a.b= 4 ") == (["a", "b"], 4)
    assert apply_overrides({"a": {"x": 1}}, ["a.b.c=on"]) == {"a": {"x": 1, "b": {"c": True}}}


def test_bad_overrides():
    assert "expected KEY=VALUE" in _error(overrides=["train.epochs"])
    assert "empty key" in _error(overrides=["train..epochs=3"])
    assert _error(overrides=["train.epochs.x=3"]) == (
        "train.epochs: expected an integer, got a mapping"
    )
    assert "is not a section" in _error({"train": {"epochs": 3}}, ["train.epochs.x=3"])


def test_dump_round_trip(tmp_path):
    recipe = load(RECIPES / "shapes.yaml", ["train.epochs=5"])
    path = tmp_path / "recipe.yaml"
    dump(recipe, path)
    again = load(path)
    assert again.to_dict() | {"name": None} == recipe.to_dict() | {"name": None}
    text = path.read_text()
    assert "image_size: [128, 128]" in text  # lists in flow style
    assert yaml.safe_load(text)["train"]["epochs"] == 5


def test_docs_describe_every_key():
    docs = (ROOT / "docs" / "recipes.md").read_text()
    missing = [key for key, *_ in iter_keys() if f"`{key}`" not in docs]
    assert not missing, f"docs/recipes.md does not document: {missing}"


def test_every_key_has_a_doc_string():
    assert all(doc for _, _, _, doc in iter_keys())


def test_learning_rate_schedules():
    from kdetect.models.schedules import WarmupSchedule

    step = WarmupSchedule(
        0.1,
        "step",
        total_steps=100,
        warmup_steps=10,
        warmup_factor=0.01,
        milestones=(50, 80),
        gamma=0.1,
    )
    values = [float(step(s)) for s in (0, 5, 10, 49, 50, 79, 80, 99)]
    np.testing.assert_allclose(
        values, [0.001, 0.0505, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5
    )
    cosine = WarmupSchedule(1.0, "cosine", total_steps=110, warmup_steps=10, min_lr_factor=0.1)
    assert float(cosine(10)) == pytest.approx(1.0)
    assert float(cosine(60)) == pytest.approx(0.55, rel=1e-5)
    assert float(cosine(110)) == pytest.approx(0.1, rel=1e-5)
    constant = WarmupSchedule(0.5, "constant")
    assert float(constant(1000)) == pytest.approx(0.5)
    assert WarmupSchedule.from_config(step.get_config()).get_config() == step.get_config()


def test_optimizer_builder():
    from kdetect.engine.builders import build_optimizer

    recipe = load({}, ["train.optimizer.name=adamw", "train.optimizer.global_clipnorm=5"])
    optimizer = build_optimizer(recipe.train, steps_per_epoch=10)
    assert type(optimizer).__name__ == "AdamW"
    assert optimizer.global_clipnorm == 5
    with pytest.raises(RecipeError, match="train.steps_per_epoch"):
        build_optimizer(recipe.train, steps_per_epoch=None)
    recipe = load({}, ["train.schedule.name=constant", "train.optimizer.clipnorm=1"])
    sgd = build_optimizer(recipe.train, steps_per_epoch=None)
    assert type(sgd).__name__ == "SGD" and sgd.clipnorm == 1


def test_model_kwargs_use_torchvision_names():
    from kdetect.config.builders import model_kwargs

    recipe = load({}, ["model.rpn.nms_thresh=0.6", "model.box.detections_per_img=7"])
    kwargs = model_kwargs(recipe.model, 3)
    assert kwargs["num_classes"] == 3
    assert kwargs["rpn_nms_thresh"] == 0.6
    assert kwargs["box_detections_per_img"] == 7
    assert kwargs["bbox_reg_weights"] == (10.0, 10.0, 5.0, 5.0)
    assert kwargs["image_size"] == (512, 512)


@pytest.mark.parametrize(
    "arch",
    ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn"],
)
def test_imported_run_recipe_rebuilds_every_architecture(arch):
    """The recipe ``checkpoint import`` writes validates and gives back every ``FasterRCNN``
    option of the architecture (rpn_* under model.rpn, box_* under model.box)."""
    from kdetect.apps.checkpoint_import import architecture_recipe
    from kdetect.config.builders import model_kwargs
    from kdetect.models.faster_rcnn.torchvision import ARCHITECTURES

    assert arch in ARCHITECTURES
    recipe = load(architecture_recipe(arch, "imported"), check_paths=False)
    kwargs = model_kwargs(recipe.model, 90)
    for key, value in ARCHITECTURES[arch].items():
        assert kwargs[key] == value, key


def test_anchor_levels_follow_the_backbone():
    torchvision_mobilenet = ["model.backbone=torchvision_mobilenet_v3_large"]
    three = load({}, [*torchvision_mobilenet, "model.anchor_sizes=[[32, 64], [32, 64], [32, 64]]"])
    assert len(three.model.anchor_sizes) == 3
    five = [*torchvision_mobilenet, "model.anchor_sizes=[[32], [64], [128], [256], [512]]"]
    message = _error(overrides=five)
    assert "model.anchor_sizes: needs 3 list(s)" in message
