"""make_dataset: batch format, resize/pad arithmetic, box-aware augmentation, sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdetect.data import augment as aug
from kdetect.data.pipeline import make_dataset
from kdetect.data.readers import read_annotations
from kdetect.data.records import Annotations, Record
from kdetect.data.tfrecord import KEYS, transform_dataset
from tests import data_support

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def rectangle_record(name="r.png", height=80, width=100, box=(20, 10, 50, 40), label=0):
    """A black image with one white filled rectangle, and that rectangle as its box."""
    image = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return Record(name, width, height, [box], [label], image=image)


def bright_extent(image: np.ndarray):
    """xyxy of the pixels brighter than half, or None."""
    ys, xs = np.nonzero(image.mean(axis=-1) > 127)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_batch_format_and_letterbox_arithmetic():
    record = rectangle_record()
    ann = Annotations(["box"], [record, rectangle_record("s.png")])
    ds = make_dataset(ann, (64, 64), batch_size=2, training=False, max_boxes=5)
    batch = next(iter(ds))
    images, bb = batch["images"], batch["bounding_boxes"]
    assert images.shape == (2, 64, 64, 3) and images.dtype == tf.float32
    assert bb["boxes"].shape == (2, 5, 4) and bb["labels"].shape == (2, 5)
    assert bb["labels"].dtype == tf.int32
    # scale = min(64/80, 64/100) = 0.64; the 100x80 image becomes 64x51 at the top-left
    scale = 0.64
    np.testing.assert_allclose(batch["scale"].numpy(), [scale, scale], rtol=1e-6)
    np.testing.assert_array_equal(batch["original_size"].numpy(), [[80, 100], [80, 100]])
    assert batch["filename"].numpy().tolist() == [b"r.png", b"s.png"]
    assert batch["image_id"].numpy().tolist() == [b"r", b"s"]
    box = bb["boxes"][0, 0].numpy()
    np.testing.assert_allclose(box, [20 * 0.64, 10 * 51 / 80, 50 * 0.64, 40 * 51 / 80], rtol=1e-5)
    np.testing.assert_array_equal(bb["labels"][0].numpy(), [0, -1, -1, -1, -1])
    np.testing.assert_array_equal(bb["boxes"][0, 1:].numpy(), np.zeros((4, 4)))
    img = images[0].numpy()
    assert img.max() == 255.0  # raw pixel values, not normalised
    assert np.all(img[51:] == 0) and np.all(img[:, 64:] == 0)
    np.testing.assert_allclose(bright_extent(img), box, atol=1.0)


def test_flip_and_crop_keep_boxes_on_the_same_pixels():
    record = rectangle_record(box=(55, 12, 95, 60))  # near the right edge: crops cut it
    ann = Annotations(["box"], [record] * 24)
    augment = {"horizontal_flip": 0.5, "scale_range": (0.7, 2.0)}
    ds = make_dataset(ann, (64, 64), batch_size=24, augment=augment, max_boxes=3, seed=3)
    batch = next(iter(ds))
    kept = 0
    flipped = 0
    for image, boxes, labels in zip(
        batch["images"].numpy(),
        batch["bounding_boxes"]["boxes"].numpy(),
        batch["bounding_boxes"]["labels"].numpy(),
        strict=True,
    ):
        extent = bright_extent(image)
        if labels[0] == -1:
            # dropped only when (almost) nothing of the rectangle is left in the crop
            assert extent is None or min(extent[2] - extent[0], extent[3] - extent[1]) <= 2
            continue
        kept += 1
        np.testing.assert_allclose(boxes[0], extent, atol=1.5)
        flipped += boxes[0][0] < 64 * 0.3
        assert np.all(labels[1:] == -1)
    assert kept >= 12 and flipped >= 2


def test_color_jitter_keeps_padding_black_and_is_seeded():
    ann = Annotations(["box"], [rectangle_record()] * 4)
    augment = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.1,
               "scale_range": (0.5, 0.5), "horizontal_flip": 0.0}  # fmt: skip
    a = next(iter(make_dataset(ann, (64, 64), 4, augment=augment, seed=7, shuffle=False)))
    b = next(iter(make_dataset(ann, (64, 64), 4, augment=augment, seed=7, shuffle=False)))
    images = a["images"].numpy()
    np.testing.assert_array_equal(images, b["images"].numpy())
    assert np.all(images[:, 26:] == 0) and np.all(images[:, :, 32:] == 0)  # 100x80 * 0.32
    assert 0 <= images.min() and images.max() <= 255
    assert len({float(img[:20, :20].mean()) for img in images}) > 1  # jitter differs per image


def test_difficult_boxes_training_vs_eval_and_max_boxes(caplog):
    record = Record(
        "d.png", 50, 50, [[1, 1, 10, 10], [2, 2, 20, 20], [5, 5, 30, 30], [0, 0, 49, 49]],
        [0, 1, 0, 1], [False, True, False, False], image=np.zeros((50, 50, 3), np.uint8),
    )  # fmt: skip
    ann = Annotations(["a", "b"], [record])
    train = next(iter(make_dataset(ann, (50, 50), 1, augment=False, max_boxes=2)))
    np.testing.assert_array_equal(train["bounding_boxes"]["labels"][0], [0, 0])  # difficult out
    assert "only the first max_boxes=2" in caplog.text
    ev = next(iter(make_dataset(ann, (50, 50), 1, training=False, max_boxes=6)))
    np.testing.assert_array_equal(ev["bounding_boxes"]["labels"][0], [0, 1, 0, 1, -1, -1])
    np.testing.assert_array_equal(
        ev["bounding_boxes"]["difficult"][0], [False, True, False, False, False, False]
    )
    assert "difficult" not in train["bounding_boxes"] and "scale" not in train


def test_training_drops_remainder_eval_keeps_it():
    ann = Annotations(["box"], [rectangle_record(f"{i}.png") for i in range(5)])
    train = list(make_dataset(ann, (32, 32), 2, augment=False))
    assert len(train) == 2 and train[0]["images"].shape[0] == 2
    assert make_dataset(ann, (32, 32), 2).element_spec["images"].shape == (2, 32, 32, 3)
    ev = list(make_dataset(ann, (32, 32), 2, training=False))
    assert [b["images"].shape[0] for b in ev] == [2, 2, 1]
    names = [n.decode() for b in ev for n in b["filename"].numpy()]
    assert names == [f"{i}.png" for i in range(5)]  # deterministic order


def test_tf_dataset_source():
    record = rectangle_record()
    source = tf.data.Dataset.from_tensors(
        {"image": record.image, "boxes": record.boxes, "labels": record.labels}
    ).repeat(2)
    batch = next(iter(make_dataset(source, (64, 64), 2, augment=False)))
    assert batch["images"].shape == (2, 64, 64, 3)
    keras_style = tf.data.Dataset.from_tensors(
        {
            "images": record.image,
            "bounding_boxes": {"boxes": [[20, 10, 50, 40], [0, 0, 0, 0]], "labels": [0, -1]},
        }
    )
    ev = next(iter(make_dataset(keras_style, (80, 100), 1, training=False, max_boxes=3)))
    np.testing.assert_array_equal(ev["bounding_boxes"]["labels"][0], [0, -1, -1])
    np.testing.assert_allclose(ev["bounding_boxes"]["boxes"][0, 0], [20, 10, 50, 40])


def test_pad_boxes_and_keep_boxes_helpers():
    boxes = tf.constant([[0, 0, 1, 1], [2, 2, 2, 5], [0, 0, 3, 3]], tf.float32)
    np.testing.assert_array_equal(aug.keep_boxes(boxes), [True, False, True])
    np.testing.assert_array_equal(aug.keep_boxes(boxes, 2.0), [False, False, True])
    b, lab = aug.pad_boxes(boxes, tf.constant([3, 4, 5]), 2)
    assert b.shape == (2, 4) and lab.numpy().tolist() == [3, 4]
    with pytest.raises(ValueError, match="unknown augmentation option"):
        aug.augment_config({"vertical_flip": 0.5})


def test_tfrecord_round_trip_matches_annotations(tmp_path):
    root = data_support.write_voc(tmp_path / "voc")
    out = tmp_path / "records"
    transform_dataset("voc", root, ["train"], out, shards=2)
    files = sorted(str(p) for p in out.glob("train-*.tfrecord"))
    assert [Path(f).name for f in files] == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog"]
    raw = next(iter(tf.data.TFRecordDataset(files[0])))
    feature = tf.train.Example.FromString(raw.numpy()).features.feature
    assert set(KEYS.values()) <= set(feature.keys())
    assert feature[KEYS["label"]].int64_list.value == [2, 1]  # TF OD API ids start at 1
    np.testing.assert_allclose(feature[KEYS["xmax"]].float_list.value, [30 / 64, 1.0])
    assert feature[KEYS["text"]].bytes_list.value == [b"dog", b"cat"]
    assert feature[KEYS["difficult"]].int64_list.value == [0, 1]

    ann = read_annotations("voc", root, "train")
    kw = dict(image_size=(64, 64), batch_size=3, training=False, max_boxes=4)
    from_records = next(iter(make_dataset(str(out / "train-*.tfrecord"), **kw)))
    from_folder = next(iter(make_dataset(out, split="train", **kw)))
    from_ann = next(iter(make_dataset(ann, **kw)))
    for batch in (from_records, from_folder):
        assert batch["filename"].numpy().tolist() == from_ann["filename"].numpy().tolist()
        for key in ("labels", "difficult"):
            np.testing.assert_array_equal(
                batch["bounding_boxes"][key], from_ann["bounding_boxes"][key]
            )
        np.testing.assert_allclose(
            batch["bounding_boxes"]["boxes"], from_ann["bounding_boxes"]["boxes"], atol=1e-3
        )
        np.testing.assert_allclose(batch["images"], from_ann["images"], atol=1.0)


def test_corrupt_image_in_pipeline_names_the_file(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"not an image")
    ann = Annotations(["x"], [Record(str(path), 10, 10, [[1, 1, 5, 5]], [0])])
    with pytest.raises(tf.errors.OpError, match=r"bad\.jpg"):
        next(iter(make_dataset(ann, (16, 16), 1, training=False)))


def test_bccd_files_pipeline():
    if not (SHARED / "bccd" / "Annotations").is_dir():
        pytest.skip("shared data is not available")
    ann = read_annotations("voc", SHARED / "bccd", "train")
    ann = Annotations(ann.classes, ann.records[:8])
    batch = next(iter(make_dataset(ann, (320, 320), 4, seed=0, max_boxes=40)))
    assert batch["images"].shape == (4, 320, 320, 3)
    labels = batch["bounding_boxes"]["labels"].numpy()
    boxes = batch["bounding_boxes"]["boxes"].numpy()
    real = labels >= 0
    assert real.sum() > 20
    assert np.all(boxes[real][:, 2] > boxes[real][:, 0]) and np.all(boxes[real] <= 320)
    Image.fromarray(batch["images"][0].numpy().astype(np.uint8))  # a valid picture


def test_color_jitter_matrix_properties():
    seed = tf.constant([1, 2], tf.int64)
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (8, 8, 3)), tf.float32)
    same = aug.color_jitter(image, seed)  # all off: identity
    np.testing.assert_allclose(same, image, atol=1e-4)
    grey = tf.fill([4, 4, 3], 100.0)  # grey has no chroma: saturation and hue leave it alone
    np.testing.assert_allclose(
        aug.color_jitter(grey, seed, saturation=0.9, hue=0.5), grey, atol=1e-3
    )
    # saturation factor 0 gives the luma grey image
    lo = aug.color_jitter(image, seed, saturation=1.0 - 1e-7).numpy()
    hi_sat = tf.random.stateless_uniform([], tf.random.experimental.stateless_split(seed, 4)[2])
    factor = float(1.0 - (1.0 - 1e-7) + 2 * (1.0 - 1e-7) * hi_sat)
    luma = image.numpy() @ np.array([0.299, 0.587, 0.114])
    expected = factor * image.numpy() + (1 - factor) * luma[..., None]
    np.testing.assert_allclose(lo, np.clip(expected, 0, 255), atol=1e-2)


def test_color_jitter_equals_step_by_step_reference():
    seed = tf.constant([5, 6], tf.int64)
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (6, 7, 3)).astype(np.float32)
    out = aug.color_jitter(tf.constant(image), seed, 0.2, 0.3, 0.4, 0.0).numpy()
    seeds = tf.random.experimental.stateless_split(seed, 4)
    d = float(tf.random.stateless_uniform([], seeds[0], -0.2, 0.2)) * 255
    c = float(tf.random.stateless_uniform([], seeds[1], 0.7, 1.3))
    s = float(tf.random.stateless_uniform([], seeds[2], 0.6, 1.4))
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    x = image + d
    mean = (x @ luma).mean()
    x = (x - mean) * c + mean
    x = s * x + (1 - s) * (x @ luma)[..., None]
    np.testing.assert_allclose(out, np.clip(x, 0, 255), atol=1e-2)
