"""The model's input transform: its scale rule against NumPy, the portable (int32) rule, box
mapping, training frames equal to prediction frames, its config, and ``model.image_size`` in
recipes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdetect.config import load
from kdetect.config.builders import build_model, image_transform
from kdetect.data.pipeline import make_dataset
from kdetect.data.records import Annotations, Record
from kdetect.models.faster_rcnn import FasterRCNN
from kdetect.models.transform import ImageTransform
from kdetect.plumbing.errors import RecipeError
from tests.helpers import TINY, assert_layer_round_trip

RNG = np.random.default_rng(0)


def ref_fit_size(height, width, frame, factor=1.0):
    """NumPy: ``round(side * min(H / h, W / w) * factor)`` in float32 (half to even), >= 1."""
    f32 = np.float32
    scale = min(f32(frame[0]) / f32(height), f32(frame[1]) / f32(width)) * f32(factor)
    return tuple(max(int(np.round(f32(side) * scale)), 1) for side in (height, width))


def ref_min_max_size(height, width, min_size, max_size):
    """torchvision's eager rule: float64 scale, each side floored."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return tuple(max(math.floor(side * scale), 1) for side in (height, width))


def _ints(pair):
    return tuple(int(v) for v in pair)


def _random_sizes(count, high):
    return [tuple(int(v) for v in RNG.integers(1, high, size=2)) for _ in range(count)]


def test_fit_rule_matches_numpy_with_jitter():
    transform = ImageTransform((64, 96))
    sizes = [(80, 100), (1, 2000), (2000, 1), (64, 96), (31, 47)] + _random_sizes(200, 3000)
    for height, width in sizes:
        assert _ints(transform.resized_size(height, width)) == ref_fit_size(
            height, width, (64, 96)
        ), (height, width)
        for factor in (0.7, 1.25):
            got = transform.resized_size(height, width, np.float32(factor))
            assert _ints(got) == ref_fit_size(height, width, (64, 96), factor), (height, width)
    assert _ints(transform.resized_size(80, 100)) == (64, 80)  # scale 0.8
    assert float(transform.scale(80, 100)) == pytest.approx(0.8)
    assert _ints(ImageTransform((64, 64)).resized_size(80, 100)) == (51, 64)  # scale 0.64


def test_min_max_rule_rounds_as_torchvision_in_float64():
    transform = ImageTransform((800, 1344), "min_max", 800, 1333)
    # float64: 194 * (800 / 194) lands below 800, so torchvision gives 799
    assert _ints(transform.resized_size(194, 259)) == (799, 1068)
    assert ref_min_max_size(194, 259, 800, 1333) == (799, 1068)
    assert _ints(transform.resized_size(600, 1000)) == (799, 1333)  # 1333 decides: 799.8
    for height, width in _random_sizes(300, 4000):
        got = _ints(transform.resized_size(height, width))
        assert got == ref_min_max_size(height, width, 800, 1333), (height, width)


def test_portable_min_max_rule_needs_no_float64_and_agrees():
    """The int32 rule of exported graphs gives float64's sizes, except where ``v * n / d`` is an
    exact integer that float64 lands just below (then one pixel more)."""
    transform = ImageTransform((800, 1344), "min_max", 800, 1333)
    assert _ints(transform.resized_size(194, 259, portable=True)) == (799, 1068)
    differ = 0
    for height, width in _random_sizes(1500, 5000):
        want = ref_min_max_size(height, width, 800, 1333)
        got = _ints(transform.resized_size(height, width, portable=True))
        if got != want:
            differ += 1
            short, long = min(height, width), max(height, width)
            by_min = 800 * long <= 1333 * short
            side, limit = (short, 800) if by_min else (long, 1333)
            other = long if by_min else short
            assert other * limit % side == 0, (height, width)
            assert sorted(np.subtract(got, want)) == [0, 1], (height, width)
    assert differ <= 3


def test_box_map_and_unmap_round_trip_per_axis():
    transform = ImageTransform((64, 64))
    boxes = np.sort(RNG.uniform(0, 80, (10, 2, 2)), axis=1).transpose(0, 2, 1).reshape(10, 4)
    boxes = boxes[:, [0, 2, 1, 3]].astype("float32")
    original, resized = (80, 100), transform.resized_size(80, 100)
    mapped = np.asarray(transform.map_boxes(boxes, original, resized))
    np.testing.assert_allclose(mapped, boxes * ([64 / 100, 51 / 80] * 2), rtol=1e-6)
    back = np.asarray(transform.unmap_boxes(mapped, original, resized))
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-4)


def _record(height, width):
    image = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    box = [width * 0.2, height * 0.3, width * 0.7, height * 0.9]
    return Record("a.png", width, height, [box], [0], image=image)


@pytest.mark.parametrize(
    "transform",
    [ImageTransform((64, 96)), ImageTransform((64, 96), "min_max", 48, 80)],
    ids=["fit", "min_max"],
)
def test_training_and_predict_frames_agree(transform):
    """The evaluation pipeline resizes an image as predict does: same size, same pixels, same
    scale, boxes by the same factors."""
    record = _record(50, 70)
    batch = next(iter(make_dataset(Annotations(["a"], [record]), transform, 1, training=False)))
    frame, size = transform.resize(record.image[None].astype("float32"))
    new_h, new_w = _ints(size)
    assert (new_h, new_w) == ((48, 67) if transform.resize_mode == "min_max" else (64, 90))
    fed = batch["images"].numpy()
    np.testing.assert_allclose(fed[:, :new_h, :new_w], np.asarray(frame)[:, :new_h, :new_w])
    assert not fed[:, new_h:].any() and not fed[:, :, new_w:].any()
    assert float(batch["scale"][0]) == pytest.approx(float(transform.scale(50, 70)), rel=1e-6)
    mapped = transform.map_boxes(record.boxes, (50, 70), size)
    np.testing.assert_allclose(batch["bounding_boxes"]["boxes"][0, :1], mapped, rtol=1e-6)
    # torchvision's rule tells training where each image's content ends (Faster R-CNN clips
    # its proposals there, as torchvision does); kdetect's ``fit`` clips to the frame
    sizes = batch["bounding_boxes"].get("image_sizes")
    if transform.resize_mode == "min_max":
        assert sizes.numpy().tolist() == [[new_h, new_w]]
    else:
        assert sizes is None


def test_min_max_training_batches_carry_each_content_size_into_the_loss():
    """Two photos of different shapes in one augmented min_max batch: each batch entry holds
    its own content size, and Faster R-CNN's training losses take them."""
    transform = ImageTransform((64, 96), "min_max", 48, 80)
    records = [_record(50, 70), _record(70, 40)]
    augment = {"horizontal_flip": 0.5, "scale_range": [0.8, 1.2]}
    source = Annotations(["a"], records)
    batch = next(iter(make_dataset(source, transform, 2, training=True, augment=augment, seed=1)))
    sizes = batch["bounding_boxes"]["image_sizes"].numpy()
    fed = batch["images"].numpy()
    for image, (height, width) in zip(fed, sizes, strict=True):
        assert 0 < height <= 64 and 0 < width <= 96
        assert not image[height:].any() and not image[:, width:].any()
        assert image[height - 1, :width].any() and image[:height, width - 1].any()
    model = FasterRCNN(**{**TINY, "resize_mode": "min_max", "min_size": 48, "max_size": 80})
    losses = model.compute_losses(batch["images"], batch["bounding_boxes"])
    assert all(np.isfinite(float(v)) for v in losses.values())


def test_min_max_size_past_the_training_frame_takes_the_fit_rule():
    transform = ImageTransform((64, 96), "min_max", 800, 1333)
    (new_h, new_w), scale = transform.training_size(50, 70)
    assert _ints((new_h, new_w)) == ref_fit_size(50, 70, (64, 96)) == (64, 90)
    assert float(scale) == pytest.approx(64 / 50)
    assert _ints(transform.resized_size(50, 70)) == (800, 1120)  # what predict uses


def test_config_round_trip_and_checks():
    transform = ImageTransform([96, 128], "min_max", 320, 640, size_divisible=16)
    rebuilt = assert_layer_round_trip(transform)
    assert rebuilt.image_size == (96, 128) and rebuilt.size_divisible == 16
    with pytest.raises(ValueError, match="multiples of 32"):
        ImageTransform((50, 64))
    assert ImageTransform((50, 64), size_divisible=1).image_size == (50, 64)
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        ImageTransform((64, 64), "stretch")
    with pytest.raises(ValueError, match="0 < min_size <= max_size"):
        ImageTransform((64, 64), "min_max", 900, 800)
    with pytest.raises(TypeError, match="two integers"):
        ImageTransform((64.0, 64))


def test_predicting_at_another_size_follows_each_rule():
    """predict's ``--image-size``: the frame of ``fit`` and ``fixed``; ``min_max``'s short and
    long sides (a square keeps the model's ratio, as torchvision's 800 / 1333 at 640)."""
    fit = ImageTransform((96, 128)).predicting_at((160, 224))
    assert fit.image_size == (160, 224) and fit.resize_mode == "fit"
    assert _ints(fit.resized_size(300, 400)) == ref_fit_size(300, 400, (160, 224))
    stretched = ImageTransform((300, 300), "fixed").predicting_at((250, 270))
    assert _ints(stretched.resized_size(480, 640)) == (250, 270)
    torchvision = ImageTransform((800, 800), "min_max", 800, 1333)
    square = torchvision.predicting_at((640, 640))
    assert (square.min_size, square.max_size, square.image_size) == (640, 1066, (800, 800))
    assert _ints(square.resized_size(480, 1600)) == ref_min_max_size(480, 1600, 640, 1066)
    sides = torchvision.predicting_at((1000, 512))
    assert (sides.min_size, sides.max_size) == (512, 1000)
    with pytest.raises(ValueError, match="multiples of 32"):
        ImageTransform((96, 128)).predicting_at((100, 128))


def test_the_model_owns_its_transform():
    model = FasterRCNN(**{**TINY, "resize_mode": "min_max", "min_size": 96, "max_size": 160})
    assert model.transform.get_config() == {
        "image_size": (64, 96),
        "resize_mode": "min_max",
        "min_size": 96,
        "max_size": 160,
        "size_divisible": 32,
    }
    assert (model.image_size, model.resize_mode) == ((64, 96), "min_max")
    again = FasterRCNN.from_config(model.get_config())
    assert again.transform.get_config() == model.transform.get_config()


def test_recipe_image_size_is_under_model():
    recipe = load({"model": {"backbone": "tiny", "image_size": [96, 128]}})
    assert recipe.model.image_size == [96, 128]
    model = build_model(recipe, 2)
    assert model.transform.get_config() == image_transform(recipe.model).get_config()
    assert model.image_size == (96, 128)


def test_the_frame_is_a_model_key_only():
    """``data.image_size`` (a name from before the model owned its input size) is an unknown
    key now, as any other: nothing was released under it."""
    with pytest.raises(RecipeError, match="^data.image_size: unknown key"):
        load({"data": {"image_size": [256, 320]}})
    with pytest.raises(RecipeError, match="^model: image_size must be .*multiples of 32"):
        load({"model": {"image_size": [100, 128]}})
