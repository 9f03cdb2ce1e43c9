"""FasterRCNN as a keras.Model: predict contract, training, serialisation, backbones."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdetect import FasterRCNN
from kdetect.plumbing.errors import CheckpointError
from tests.helpers import TINY
from tests.helpers import tiny_batch as _batch


@pytest.fixture(scope="module")
def model(tiny_detector):
    return tiny_detector


def test_predict_contract_on_raw_images_of_any_size(model):
    images = np.random.default_rng(1).integers(0, 256, (2, 50, 70, 3)).astype("uint8")
    out = model.predict(images, verbose=0)
    assert set(out) == {"boxes", "confidence", "labels", "num_detections"}
    assert out["boxes"].shape == (2, 20, 4)
    assert out["confidence"].shape == (2, 20)
    assert out["labels"].shape == (2, 20)
    assert out["num_detections"].shape == (2,)
    for b in range(2):
        n = int(out["num_detections"][b])
        assert n > 0
        assert np.all(out["labels"][b, n:] == -1)
        assert np.all(out["labels"][b, :n] >= 0) and np.all(out["labels"][b, :n] < 3)
        boxes = out["boxes"][b, :n]
        # Boxes are in the pixels of the 50x70 input, not of the 64x96 network frame.
        assert boxes[:, [0, 2]].max() <= 70 + 1e-3 and boxes[:, [1, 3]].max() <= 50 + 1e-3
        assert boxes.min() >= 0
        assert np.all(np.diff(out["confidence"][b, :n]) <= 1e-6)  # sorted by score


def test_predict_maps_boxes_back_to_input_pixels(model):
    """A 128x192 image is shrunk to the 64x96 frame: its boxes are exactly 2x those of the
    same pixels fed at 64x96."""
    rng = np.random.default_rng(2)
    big = rng.uniform(0, 255, (1, 128, 192, 3)).astype("float32")
    small = tf.image.resize(big, (64, 96), method="bilinear").numpy()
    out_big = model.predict(big, verbose=0)
    out_small = model.predict(small, verbose=0)
    n = int(out_small["num_detections"][0])
    assert n == int(out_big["num_detections"][0]) and n > 0
    np.testing.assert_allclose(
        out_big["boxes"][0, :n], 2 * out_small["boxes"][0, :n], rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(out_big["confidence"], out_small["confidence"], atol=1e-6)


def test_train_step_reports_each_loss_and_overfits_one_batch():
    model = FasterRCNN(**TINY)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    batch = _batch()

    def mean_loss():  # the samplers are random: average a few draws
        draws = [model.compute_losses(batch["images"], batch["bounding_boxes"]) for _ in range(3)]
        return float(np.mean([float(d["loss"]) for d in draws]))

    untrained = mean_loss()
    dataset = tf.data.Dataset.from_tensors(batch).repeat(40)
    history = model.fit(dataset, epochs=1, verbose=0).history
    assert set(history) == {
        "loss",
        "rpn_cls_loss",
        "rpn_box_loss",
        "rcnn_cls_loss",
        "rcnn_box_loss",
    }
    model.fit(dataset, epochs=1, verbose=0)
    # 80 steps on one batch: the loss must fall far below that of the untrained model.
    assert mean_loss() < 0.5 * untrained
    second = model.compute_losses(batch["images"], batch["bounding_boxes"])
    total = sum(
        float(second[k]) for k in ("rpn_cls_loss", "rpn_box_loss", "rcnn_cls_loss", "rcnn_box_loss")
    )
    assert float(second["loss"]) == pytest.approx(total, rel=1e-5)
    # evaluate() runs test_step and reports the same terms.
    results = model.evaluate(tf.data.Dataset.from_tensors(_batch()), verbose=0, return_dict=True)
    assert set(results) == set(history)


def test_images_without_boxes_train_without_nan():
    model = FasterRCNN(**TINY)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    empty = _batch(with_boxes=False)
    losses = model.compute_losses(empty["images"], empty["bounding_boxes"])
    assert float(losses["rpn_box_loss"]) == 0.0 and float(losses["rcnn_box_loss"]) == 0.0
    history = model.fit(tf.data.Dataset.from_tensors(empty).repeat(2), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1])


def test_save_and_load_round_trip_gives_identical_predictions(model, tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (1, 64, 96, 3)).astype("uint8")
    expected = model.predict(images, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, FasterRCNN)
    assert loaded.get_config() == model.get_config()
    got = loaded.predict(images, verbose=0)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-5)


def test_config_round_trip(model):
    config = model.get_config()
    clone = FasterRCNN.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    images = np.random.default_rng(4).integers(0, 256, (1, 64, 96, 3)).astype("uint8")
    a = model.predict(images, verbose=0)
    b = clone.predict(images, verbose=0)
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-5)


@pytest.mark.parametrize(
    "backbone, fpn",
    [
        ("resnet50", True),
        ("resnet50", False),
        ("vgg16", False),
        ("mobilenet_v2", True),
        ("torchvision_resnet50", True),
        ("torchvision_mobilenet_v3_large", True),
        ("tiny", False),
    ],
)
def test_backbones_build_and_predict(backbone, fpn):
    anchors = ((16,), (32,), (64,), (128,), (256,)) if fpn else ((32, 64, 128),)
    if backbone == "torchvision_mobilenet_v3_large":  # a pyramid of two maps: three RPN levels
        anchors = ((32, 64),) * 3
    model = FasterRCNN(
        num_classes=3,
        backbone=backbone,
        fpn=fpn,
        image_size=(64, 64),
        anchor_sizes=anchors,
        rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=10,
        box_head_units=32,
        fpn_channels=32,
        box_detections_per_img=5,
    )
    out = model.predict(np.zeros((1, 64, 64, 3), "uint8"), verbose=0)
    assert out["boxes"].shape == (1, 5, 4)
    losses = model.compute_losses(_batch(1)["images"][:, :64, :64], _batch(1)["bounding_boxes"])
    assert np.isfinite(float(losses["loss"]))


def test_min_max_mode_runs_each_image_at_its_own_frame_without_retracing_each_size():
    """torchvision's transform: short side to min_size (long side capped), padded to 32; boxes
    come back in input pixels, and new sizes reuse the traced predict graph."""
    model = FasterRCNN(**{**TINY, "resize_mode": "min_max", "min_size": 96, "max_size": 160})
    sizes = [(50, 70), (120, 64), (33, 200), (96, 96), (75, 41), (140, 90)]
    for height, width in sizes:
        out = model.predict_on_batch(np.full((1, height, width, 3), 127, "uint8"))
        count = int(out["num_detections"][0])
        boxes = np.asarray(out["boxes"][0][:count])
        assert count > 0
        assert (boxes[:, [0, 2]] <= width + 1e-3).all() and (
            boxes[:, [1, 3]] <= height + 1e-3
        ).all()
    assert model.predict_function.experimental_get_tracing_count() <= 3
    new_h, new_w = (int(v) for v in model.transform.resized_size(33, 200))
    assert (new_h, new_w) == (26, 160)  # the 160 px long side decides: 33 * 0.8 = 26.4


def test_torchvision_v2_options_build_train_and_round_trip(tmp_path):
    options = {
        **TINY,
        "fpn_batch_norm": True,
        "rpn_conv_depth": 2,
        "box_head_type": "conv_fc",
        "roi_align_aligned": False,
    }
    model = FasterRCNN(**options)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    dataset = tf.data.Dataset.from_tensors(_batch()).repeat(2)
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    config = loaded.get_config()
    assert {k: config[k] for k in ("fpn_batch_norm", "rpn_conv_depth", "box_head_type")} == {
        "fpn_batch_norm": True,
        "rpn_conv_depth": 2,
        "box_head_type": "conv_fc",
    }
    images = np.full((1, 64, 96, 3), 90, "uint8")
    np.testing.assert_allclose(
        loaded.predict_on_batch(images)["confidence"], model.predict_on_batch(images)["confidence"]
    )


def test_freeze_reduces_trainable_weights():
    full = FasterRCNN(**TINY)
    frozen = FasterRCNN(**{**TINY, "freeze": "stage2"})
    assert len(frozen.trainable_weights) < len(full.trainable_weights)
    names = {w.path for w in frozen.trainable_weights}
    assert not any("stage1_" in n or "stage2_" in n or "stem" in n for n in names)
    assert any("stage3_" in n for n in names)


# case -> (the array given to predict, words of the error after "got shape (...)")
BAD_BATCHES = {
    "empty batch": (np.zeros((0, 50, 70, 3), "uint8"), r"\(0, 50, 70, 3\) \(an empty batch\)"),
    "zero-size image": (np.zeros((1, 0, 70, 3), "uint8"), r"\(1, 0, 70, 3\) \(a zero-size image\)"),
    "2-D": (np.zeros((50, 70), "uint8"), r"\(50, 70\)$"),
    "1 channel": (
        np.zeros((1, 50, 70, 1), "uint8"),
        r"\(1, 50, 70, 1\): 1 channel\(s\) \(grayscale",
    ),
    "4 channels": (np.zeros((1, 50, 70, 4), "uint8"), r"\(1, 50, 70, 4\): 4 channel\(s\) \(RGBA"),
    "no batch axis": (np.zeros((50, 70, 3), "uint8"), r"\(50, 70, 3\); add a batch axis"),
}


@pytest.mark.parametrize("case", BAD_BATCHES, ids=list(BAD_BATCHES))
def test_bad_batches_are_refused_and_the_model_stays_usable(model, case):
    images, words = BAD_BATCHES[case]
    for entry in (model.predict, model.predict_on_batch):
        with pytest.raises(
            ValueError, match=r"expected \[batch, height, width, 3\] images.*, got shape " + words
        ):
            entry(images)
    good = np.full((1, 50, 70, 3), 127, "uint8")
    assert model.predict_on_batch(good)["boxes"].shape == (1, 20, 4)
    assert model.predict(good, verbose=0)["boxes"].shape == (1, 20, 4)
    dataset = tf.data.Dataset.from_tensor_slices(np.repeat(good, 2, 0)).batch(1)
    assert model.predict(dataset, verbose=0)["boxes"].shape == (2, 20, 4)  # tf.data still works


def test_float_images_in_0_1_warn_once_at_the_caller(model):
    with pytest.warns(UserWarning, match=r"at most 1\.0.*0\.\.255") as record:
        model.predict_on_batch(np.full((1, 50, 70, 3), 0.5, "float32"))
    assert len(record) == 1 and record[0].filename == __file__


@pytest.mark.parametrize(
    "argument, value, error",
    [("num_classes", "3", TypeError), ("num_classes", 2.5, TypeError),
     ("num_classes", True, TypeError), ("num_classes", 0, ValueError),
     ("image_size", 128, TypeError), ("image_size", "128", TypeError),
     ("image_size", (64, 64, 3), TypeError), ("image_size", (64.0, 96), TypeError)],
)  # fmt: skip
def test_bad_constructor_arguments_name_the_argument(argument, value, error):
    with pytest.raises(error, match=f"^{argument} must be"):
        FasterRCNN(**{**TINY, argument: value})


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="multiples of 32"):
        FasterRCNN(**{**TINY, "image_size": (100, 100)})
    with pytest.raises(ValueError, match="unknown backbone"):
        FasterRCNN(**{**TINY, "backbone": "resnet9000"})
    with pytest.raises(ValueError, match="anchor_sizes"):
        FasterRCNN(**{**TINY, "anchor_sizes": ((8,),)})
    with pytest.raises(ValueError, match="fpn"):
        FasterRCNN(num_classes=2, backbone="torchvision_mobilenet_v3_large", fpn=False)
    with pytest.raises(CheckpointError, match="not found"):
        FasterRCNN(
            num_classes=2, backbone="mobilenet_v2", image_size=(64, 64), backbone_weights="/nope.h5"
        )


def test_imagenet_download_failure_suggests_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(CheckpointError, match="backbone_weights"):
        FasterRCNN(
            num_classes=2, backbone="mobilenet_v2", image_size=(64, 64), backbone_weights="imagenet"
        )


def test_local_backbone_weights_file_is_loaded(tmp_path):
    source = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(64, 64, 3)
    )
    path = tmp_path / "mnv2.weights.h5"
    source.save_weights(path)
    model = FasterRCNN(
        num_classes=2, backbone="mobilenet_v2", image_size=(64, 64), backbone_weights=str(path)
    )
    layer = model.backbone.get_layer("Conv1")
    np.testing.assert_array_equal(
        layer.get_weights()[0], source.get_layer("Conv1").get_weights()[0]
    )


def test_loaded_model_keeps_its_optimizer(tmp_path):
    model = FasterRCNN(**TINY)
    model.compile(optimizer=keras.optimizers.Adam(3e-4))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(3e-4)


def test_backbone_names_are_the_backbones_built():
    # kdetect.backbones.names is the one list (the recipe schema reads it without Keras).
    from kdetect.backbones import networks as backbones
    from kdetect.backbones.names import BACKBONES

    assert set(backbones._SPECS) == set(BACKBONES)


def test_default_anchor_sizes_follow_the_rpn_levels():
    """One size per level for a five-level pyramid; all five sizes on each level otherwise
    (torchvision's MobileNetV3 detector: three levels of (32, 64, 128, 256, 512))."""
    from kdetect.backbones.names import checked_anchor_sizes

    assert checked_anchor_sizes(None, True, 5) == ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    assert checked_anchor_sizes(None, True, 3) == ((32.0, 64.0, 128.0, 256.0, 512.0),) * 3
    assert checked_anchor_sizes(None, False, 1) == ((32.0, 64.0, 128.0, 256.0, 512.0),)
    with pytest.raises(ValueError, match="^anchor_sizes: needs 3 list"):
        checked_anchor_sizes(((32,), (64,)), True, 3)
    with pytest.raises(ValueError, match="same number"):
        checked_anchor_sizes(((32,), (64, 80)), True, 2)
    with pytest.raises(ValueError, match="at least one"):
        checked_anchor_sizes(((), ()), True, 2)
