"""The detector family: every registered model type honours one contract, and recipes, the
registry and the CLI reach each type by name.

The contract tests run once per ``model.type`` in :data:`kdetect.models.registry.MODEL_TYPES`
(a new type is covered by adding its registry line): the type is built as a user builds it,
from ``recipes/shapes.yaml`` with ``--set model.type=TYPE`` (kdetect's tiny backbone, 128 px),
then one training step reports each of its loss terms, ``predict`` keeps the output contract
on raw images of any size, and a saved ``.keras`` file and a config round trip predict the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from kdetect.config import load
from kdetect.config.builders import (
    SHARED_KEYS,
    build_model,
    constructor_arguments,
    model_kwargs,
    model_section,
)
from kdetect.models import build, loss_names
from kdetect.models.outputs import OUTPUT_KEYS
from kdetect.models.registry import (
    MODEL_TYPES,
    UnknownModelError,
    architecture_type,
    architectures,
    model_class,
)
from kdetect.plumbing.errors import KdetectError, RecipeError
from tests.helpers import ref_iou_matrix
from tests.train_support import kdetect

SHAPES = "recipes/shapes.yaml"


def shapes_recipe(model_type: str, *overrides: str):
    return load(SHAPES, [f"model.type={model_type}", *overrides])


def painted_batch(size=128, batch=2):
    """Two painted objects per image (labels 0 and 2) at the shapes recipe's frame."""
    images = np.full((batch, size, size, 3), 90.0, "float32")
    images[:, 10:50, 12:60] = [255, 40, 40]
    images[:, 70:118, 64:100] = [40, 40, 255]
    boxes = np.zeros((batch, 4, 4), "float32")
    boxes[:, 0] = [12, 10, 60, 50]
    boxes[:, 1] = [64, 70, 100, 118]
    labels = -np.ones((batch, 4), "int32")
    labels[:, :2] = [0, 2]
    return {"images": images, "bounding_boxes": {"boxes": boxes, "labels": labels}}


@pytest.fixture(scope="module", params=sorted(MODEL_TYPES))
def family_model(request):
    """(type, a tiny detector of that type built from the shapes recipe, compiled)."""
    model = build_model(shapes_recipe(request.param), num_classes=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return request.param, model


def test_each_type_is_its_registry_class_and_names_its_losses(family_model):
    model_type, model = family_model
    assert isinstance(model, model_class(model_type))
    assert model.TYPE == model_type
    assert model.LOSS_NAMES[0] == "loss" and len(model.LOSS_NAMES) >= 3
    assert loss_names(model.LOSS_NAMES) == list(model.LOSS_NAMES)


def test_each_type_trains_one_step_with_finite_loss_terms(family_model):
    _, model = family_model
    logs = model.train_on_batch(painted_batch(), return_dict=True)
    assert set(logs) == set(model.LOSS_NAMES)
    assert all(np.isfinite(float(v)) for v in logs.values()), logs
    terms = sum(float(logs[k]) for k in model.LOSS_NAMES[1:])
    assert float(logs["loss"]) == pytest.approx(terms, rel=1e-4)


@pytest.mark.parametrize("shape", [(1, 97, 143, 3), (2, 200, 61, 3)])
def test_each_type_predicts_the_contract_on_raw_images_of_any_size(family_model, shape):
    _, model = family_model
    images = np.random.default_rng(0).integers(0, 255, shape).astype("uint8")
    out = model.predict_on_batch(images)
    assert set(out) == set(OUTPUT_KEYS)
    batch, count = shape[0], out["boxes"].shape[1]
    assert out["boxes"].shape == (batch, count, 4)
    assert out["confidence"].shape == out["labels"].shape == (batch, count)
    assert out["num_detections"].shape == (batch,)
    for b in range(batch):
        n = int(out["num_detections"][b])
        labels = np.asarray(out["labels"][b])
        assert (labels[:n] >= 0).all() and (labels[:n] < 3).all() and (labels[n:] == -1).all()
        scores = np.asarray(out["confidence"][b][:n])
        assert (np.diff(scores) <= 1e-6).all(), "scores sorted descending"
        boxes = np.asarray(out["boxes"][b][:n])
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= shape[2] + 1e-3).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= shape[1] + 1e-3).all()


def _pairs_overlapping(out, threshold, same_class_only):
    """How many pairs of one image's detections overlap by IoU > ``threshold``."""
    n = int(out["num_detections"][0])
    boxes, labels = np.asarray(out["boxes"][0][:n]), np.asarray(out["labels"][0][:n])
    iou = ref_iou_matrix(boxes, boxes)
    upper = np.triu(iou > threshold + 1e-4, k=1)
    if same_class_only:
        upper &= labels[:, None] == labels[None, :]
    return int(upper.sum())


def test_each_type_changes_its_final_suppression_at_prediction_time(family_model):
    """``configure_detections`` (predict's --iou and --agnostic) retraces with the new IoU
    threshold, per class or across classes; the RPN's own suppression is not touched."""
    _, model = family_model
    images = np.random.default_rng(1).integers(0, 255, (1, 128, 128, 3)).astype("uint8")
    final = [layer for layer in model._flatten_layers() if getattr(layer, "FINAL_NMS", False)]
    assert len(final) == 1
    layer = final[0]
    before = (layer.nms_thresh, layer.class_agnostic)
    kept = (layer.score_thresh, layer.detections_per_img)
    # untrained: every candidate above a low score, room for all of them
    layer.score_thresh, layer.detections_per_img = 1e-3, 300
    others = {id(layer): layer.nms_thresh for layer in model._flatten_layers()
              if hasattr(layer, "nms_thresh") and layer is not final[0]}  # fmt: skip
    try:
        model.configure_detections(nms_iou=1.0)
        loose = model.predict_on_batch(images)
        model.configure_detections(nms_iou=0.3)
        per_class = model.predict_on_batch(images)
        model.configure_detections(class_agnostic=True)
        agnostic = model.predict_on_batch(images)
    finally:
        layer.score_thresh, layer.detections_per_img = kept
        model.configure_detections(*before)
    assert _pairs_overlapping(per_class, 0.3, same_class_only=True) == 0
    assert _pairs_overlapping(agnostic, 0.3, same_class_only=False) == 0
    # ... where the looser settings keep such pairs
    if _pairs_overlapping(loose, 0.3, same_class_only=True) == 0:
        # untrained FCOS regresses zero-size boxes, which overlap nothing; its decoder is
        # RetinaNet's, shown here with real boxes
        pytest.skip("the untrained model's boxes do not overlap")
    assert _pairs_overlapping(per_class, 0.3, same_class_only=False) > 0
    assert {id(other): other.nms_thresh for other in model._flatten_layers()
            if id(other) in others} == others  # fmt: skip


def test_each_type_predicts_at_another_image_size_as_if_built_for_it(family_model):
    """``configure_detections(image_size=...)`` (predict's --image-size) predicts what the same
    weights predict in a detector built for that frame; ``None`` leaves the frame alone."""
    model_type, model = family_model
    images = np.random.default_rng(2).integers(0, 255, (1, 150, 230, 3)).astype("uint8")
    built_for = build_model(shapes_recipe(model_type, "model.image_size=[192,256]"), 3)
    built_for.set_weights(model.get_weights())
    loose = []
    for detector in (model, built_for):
        final = [layer for layer in detector._flatten_layers() if getattr(layer, "FINAL_NMS", 0)]
        loose.append((final[0], final[0].score_thresh))
        final[0].score_thresh = 1e-3  # untrained: keep many candidates
    try:
        at_128 = model.predict_on_batch(images)
        model.configure_detections(image_size=(192, 256))
        assert model.image_size == (192, 256)
        resized = model.predict_on_batch(images)
        expected = built_for.predict_on_batch(images)
        model.configure_detections(nms_iou=None)
        assert model.image_size == (192, 256)
    finally:
        model.configure_detections(image_size=(128, 128))
        for layer, threshold in loose:
            layer.score_thresh = threshold
    assert int(expected["num_detections"][0]) > 0
    np.testing.assert_array_equal(resized["num_detections"], expected["num_detections"])
    np.testing.assert_allclose(resized["boxes"], expected["boxes"], atol=1e-3)
    np.testing.assert_allclose(resized["confidence"], expected["confidence"], atol=1e-5)
    assert not np.allclose(at_128["boxes"], expected["boxes"], atol=0.5)  # the frame matters
    if model.transform.size_divisible > 1:  # SSD's stretched frame takes any size
        with pytest.raises(KdetectError, match="multiples of 32"):
            model.configure_detections(image_size=(100, 128))
        assert model.image_size == (128, 128)


def test_each_type_survives_save_load_and_its_config(family_model, tmp_path):
    model_type, model = family_model
    images = np.random.default_rng(1).integers(0, 255, (1, 128, 128, 3)).astype("uint8")
    before = model.predict_on_batch(images)
    path = tmp_path / f"{model_type}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    rebuilt = type(model).from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    for other in (loaded, rebuilt):
        after = other.predict_on_batch(images)
        for key in OUTPUT_KEYS:
            np.testing.assert_allclose(after[key], before[key], rtol=1e-5, atol=1e-4)


def test_registry_builds_by_type_and_names_unknown_ones():
    model = build("faster_rcnn", num_classes=2, backbone="tiny", image_size=(64, 64))
    assert model.num_classes == 2 and model.TYPE == "faster_rcnn"
    with pytest.raises(UnknownModelError, match="did you mean faster_rcnn"):
        build("faster_rnn", num_classes=2)
    with pytest.raises(UnknownModelError, match="unknown --arch"):
        architecture_type("fasterrcnn_resnet51_fpn")
    with pytest.raises(TypeError, match="num_classes"):
        build("faster_rcnn")
    for arch, model_type in architectures().items():
        assert arch in model_class(model_type).TORCHVISION_ARCHITECTURES


def test_every_architecture_becomes_a_recipe_model_section_that_builds_the_same_options():
    for arch, model_type in architectures().items():
        options = model_class(model_type).TORCHVISION_ARCHITECTURES[arch]
        section = model_section(options, model_type)
        recipe = load({"model": section}, check_paths=False)
        kwargs = model_kwargs(recipe.model, 90)
        for key, value in options.items():
            assert _lists(kwargs[key]) == _lists(value), (arch, key)


def _lists(value):
    """Nested tuples as lists (a recipe holds lists)."""
    return [_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.type=faster_rnn", "model.type: expected one of .*did you mean faster_rcnn"),
        ("model.options={score_thresh: 0.1}", "model.options: faster_rcnn's settings"),
    ],
)
def test_recipe_model_type_and_options_errors_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message):
        load(SHAPES, [override])


@pytest.mark.skipif(len(MODEL_TYPES) < 2, reason="one model type registered")
def test_options_of_another_type_are_checked_against_its_constructor():
    other = next(name for name in MODEL_TYPES if name != "faster_rcnn")
    with pytest.raises(
        RecipeError, match=f"model.options.no_such: not a setting of model.type {other}"
    ):
        load(SHAPES, [f"model.type={other}", "model.options.no_such=1"])
    with pytest.raises(RecipeError, match="model.options.backbone: set it as model.backbone"):
        load(SHAPES, [f"model.type={other}", "model.options.backbone=tiny"])


def test_models_command_lists_every_type_and_architecture(capsys):
    assert kdetect("models", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert set(listed) == set(MODEL_TYPES)
    for name, entry in MODEL_TYPES.items():
        assert listed[name]["torchvision"] == list(entry.architectures)


def test_models_doc_lists_every_type_architecture_and_setting():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    for arch in architectures():
        assert f"`{arch}`" in docs, arch
    for name in MODEL_TYPES:
        if name == "faster_rcnn":
            continue
        line = next(row for row in docs.splitlines() if row.startswith(f"- **`{name}`**"))
        for arg in constructor_arguments(name):
            if arg not in SHARED_KEYS:
                assert f"`{arg}: " in line, (name, arg)
