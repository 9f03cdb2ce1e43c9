"""SSD300-VGG16 and SSDlite320-MobileNetV3 imported from torchvision give torchvision's own
detections (photos of several sizes), stages and training losses; kdetect's own small SSD trains,
saves and reloads.

torchvision runs in its own interpreter (``tests/torch_peer.py``) through
``tests/torchvision_ssd_reference.py``: it builds each random detector made non-trivial, saves
its state dict, and records ``model.eval()`` detections, the stages of one photo and the
training-mode loss dict on two photos with their real boxes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdetect.backbones.networks import L2Normalization, preprocess_images
from kdetect.data.augment import resize_crop_pad
from kdetect.models import build
from kdetect.models.ssd import SSD, SSDLite
from kdetect.models.ssd.heads import SSDHead
from kdetect.models.transform import ImageTransform
from tests.helpers import assert_layer_round_trip
from tests.models.test_pretrained_parity import (
    MIN_IOU,
    SCORE_TOL,
    _close,
    _kdetect_detections,
    _nhwc,
    match_detections,
)
from tests.pretrained_support import PHOTOS, RACCOON
from tests.torch_peer import run_torch

REFERENCE = Path(__file__).resolve().parents[1].joinpath("torchvision_ssd_reference.py")
ARCHS = {"ssd300_vgg16": SSD, "ssdlite320_mobilenet_v3_large": SSDLite}
NUM_CLASSES = 21  # torchvision's count, background included (VOC's)
SSD_PHOTOS = PHOTOS[:3]  # small, tall, wide: each stretched to the square frame
LOSS_PHOTOS = ("raccoon-102.jpg", "raccoon-104.jpg")
LOSS_LABELS = (0, 4)  # kdetect labels given to each photo's boxes (torchvision's + 1)
LOSS_RTOL = 2e-4
# Detections that float32 rounding may decide either way (an NMS IoU at the threshold, a score
# at the top-N cut): at most this share of a photo's detections may be unpaired.
MAX_TIE_SHARE = 0.03


def _reference(*commands) -> None:
    """The reference's commands (each a list of words), chained in one torch interpreter."""
    chain = []
    for command in commands:
        chain += [*(["+"] if chain else []), *command, "--num-classes", NUM_CLASSES]
    run_torch(REFERENCE.read_text(), *chain, timeout=900)


def _boxes(photo: str) -> np.ndarray:
    root = ET.parse(RACCOON.parent / "Annotations" / photo.replace(".jpg", ".xml")).getroot()
    return np.array(
        [
            [float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
            for o in root.iter("object")
        ],
        np.float32,
    )


@pytest.fixture(scope="module", params=list(ARCHS))
def parity(request, tmp_path_factory):
    """Everything torchvision computed for one architecture, and the imported model."""
    if not RACCOON.is_dir():
        pytest.skip("../shared/data/raccoon not available")
    arch = request.param
    folder = tmp_path_factory.mktemp(arch)
    images, files = [], []
    for name, photo, size in SSD_PHOTOS:
        image = Image.open(RACCOON / photo).convert("RGB")
        if size is not None:
            image = image.resize(size, Image.BILINEAR)
        images.append(np.asarray(image))
        files.append(folder / f"{name}.npy")
        np.save(files[-1], images[-1])
    weights = folder / "checkpoint.pth"
    # losses: two photos as one batch, with their real boxes
    loss_images, targets = [], {}
    for i, (photo, label) in enumerate(zip(LOSS_PHOTOS, LOSS_LABELS, strict=True)):
        loss_images.append(np.asarray(Image.open(RACCOON / photo).convert("RGB")))
        np.save(folder / f"loss_{i}.npy", loss_images[-1])
        targets[f"boxes_{i}"] = _boxes(photo)
        targets[f"labels_{i}"] = np.full(len(targets[f"boxes_{i}"]), label + 1, np.int64)
    np.savez(folder / "targets.npz", **targets)
    loss_files = [folder / f"loss_{i}.npy" for i in range(len(LOSS_PHOTOS))]
    _reference(
        ["make", arch, weights, "--calibrate", *files],
        ["run", arch, weights, folder / "run.npz", *files],
        ["losses", arch, weights, folder / "losses.npz", folder / "targets.npz", *loss_files],
    )
    model = ARCHS[arch].from_torchvision(weights, arch=arch)
    return {
        "arch": arch,
        "model": model,
        "images": images,
        "run": dict(np.load(folder / "run.npz")),
        "losses": dict(np.load(folder / "losses.npz")),
        "loss_images": loss_images,
        "targets": targets,
        "weights": weights,
    }


@pytest.mark.parametrize("index", range(len(SSD_PHOTOS)), ids=[p[0] for p in SSD_PHOTOS])
def test_detections_equal_torchvision(parity, index):
    """Same count; every detection paired (same label, IoU >= 0.99, score within 1e-3) but
    for at most MAX_TIE_SHARE decided by float rounding."""
    reference, model = parity["run"], parity["model"]
    theirs = {k: reference[f"{k}_{index}"] for k in ("boxes", "scores", "labels")}
    ours = _kdetect_detections(model, parity["images"][index])
    assert len(theirs["scores"]) > 10, "the reference model should detect something"
    assert len(np.unique(theirs["labels"])) > 1
    worst = match_detections(ours, theirs)
    print(
        f"{parity['arch']} {SSD_PHOTOS[index][0]}: {len(theirs['scores'])} detections, worst "
        f"IoU {worst['iou']:.6f}, score {worst['score']:.2e}, box {worst['box']:.4f} px, "
        f"unpaired: {len(worst['missing'])} torchvision / {len(worst['extra'])} kdetect"
    )
    assert len(ours["scores"]) == len(theirs["scores"])
    assert worst["iou"] >= MIN_IOU and worst["score"] <= SCORE_TOL
    assert len(worst["missing"]) <= MAX_TIE_SHARE * len(theirs["scores"]), worst


def test_every_stage_equals_torchvision(parity):
    """Input, each feature map, the head's outputs (fed torchvision's features) and the default
    boxes on the first photo."""
    ref, model = parity["run"], parity["model"]
    frame = _nhwc(ref["input"])
    normalised = preprocess_images(parity["images"][0][None], model.backbone_name)
    resized = tf.image.resize(normalised, model.image_size, method="bilinear")
    _close(resized, frame, 1e-5)
    theirs = [_nhwc(ref[f"feature_{level}"]) for level in range(6)]
    features = model.feature_maps(frame)
    assert len(features) == 6
    # Through the whole chain: the random extra blocks' batch norms (calibrated on 1x1 maps)
    # amplify float32 rounding; each block fed torchvision's previous map agrees to 1e-4.
    for level, feature in enumerate(features):
        _close(feature, theirs[level], 1e-4 if level < 2 else 5e-4)
    extras = [layer for layer in model.extractor.layers if layer.name.startswith("extra_")]
    for block in range(len(model.extra_channels)):
        if not extras:  # SSD300: the VGG backbone holds its extra layers
            break
        x = theirs[block + 1]
        for layer in extras:
            if layer.name.startswith(f"extra_{block}_"):
                x = layer(x)
        _close(x, theirs[block + 2], 1e-4)
    logits, deltas = model.head(theirs)
    _close(logits[0], ref["cls_logits"], 1e-5)
    _close(deltas[0], ref["bbox_regression"], 1e-5)
    anchors = model.default_boxes(model.image_size, theirs)
    np.testing.assert_allclose(anchors, ref["anchors"], rtol=0, atol=1e-4)


def test_losses_equal_torchvision(parity):
    """Each training loss term (hard negative mining included) on two photos with their real
    boxes, stretched to the frame as torchvision's transform does."""
    model, targets = parity["model"], parity["targets"]
    frames, boxes, labels = [], [], []
    most = max(len(targets[f"boxes_{i}"]) for i in range(len(LOSS_PHOTOS)))
    for i, image in enumerate(parity["loss_images"]):
        frame, size = model.transform.resize(np.asarray(image, np.float32)[None])
        frames.append(frame[0])
        mapped = np.asarray(model.transform.map_boxes(targets[f"boxes_{i}"], image.shape[:2], size))
        pad = most - len(mapped)
        boxes.append(np.concatenate([mapped, np.zeros((pad, 4), np.float32)]))
        labels.append(np.concatenate([targets[f"labels_{i}"] - 1, -np.ones(pad, np.int64)]))
    found = model.compute_losses(
        tf.stack(frames),
        {"boxes": np.stack(boxes), "labels": np.stack(labels).astype(np.int32)},
        training=False,
    )
    theirs = parity["losses"]
    print(
        f"{parity['arch']} losses: cls {float(found['cls_loss']):.6f} / "
        f"{float(theirs['classification']):.6f}, box {float(found['box_loss']):.6f} / "
        f"{float(theirs['bbox_regression']):.6f}"
    )
    np.testing.assert_allclose(found["cls_loss"], theirs["classification"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(found["box_loss"], theirs["bbox_regression"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(
        found["loss"], theirs["classification"] + theirs["bbox_regression"], rtol=LOSS_RTOL
    )


def test_build_by_architecture_name(parity):
    """``kdetect.models.build(arch, weights=...)`` imports the same model."""
    model = build(parity["arch"], weights=parity["weights"])
    assert type(model) is ARCHS[parity["arch"]]
    assert model.num_classes == NUM_CLASSES - 1
    for ours, theirs in zip(model.weights, parity["model"].weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)


# --- kdetect's own small SSD --------------------------------------------------------------
def _toy_batch(size=128, count=2):
    """Images with bright rectangles and their boxes (class = index % 2)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 60, (count, size, size, 3)).astype(np.float32)
    boxes = np.zeros((count, 2, 4), np.float32)
    labels = np.full((count, 2), -1, np.int32)
    for i in range(count):
        x1, y1 = rng.integers(5, 50, 2)
        w, h = rng.integers(30, 70, 2)
        images[i, y1 : y1 + h, x1 : x1 + w] = 220.0
        boxes[i, 0] = (x1, y1, x1 + w, y1 + h)
        labels[i, 0] = i % 2
    return {"images": images, "bounding_boxes": {"boxes": boxes, "labels": labels}}


@pytest.mark.parametrize("cls", [SSD, SSDLite], ids=["ssd", "ssdlite"])
def test_tiny_ssd_trains_saves_and_reloads(cls, tmp_path):
    keras.utils.set_random_seed(0)
    model = cls(
        num_classes=2,
        backbone="tiny",
        image_size=(128, 128),
        resize_mode="fit",
        aspect_ratios=((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,), (2.0,)),
        anchor_scales=None,
        steps=None,
        extra_channels=(128, 128, 64, 64),
        seed=1,
    )
    batch = _toy_batch()
    first = model.compute_losses(batch["images"], batch["bounding_boxes"], training=False)
    assert all(np.isfinite(float(v)) for v in first.values())
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    data = tf.data.Dataset.from_tensors(batch).repeat()
    history = model.fit(data, steps_per_epoch=8, epochs=1, verbose=0)
    last = model.compute_losses(batch["images"], batch["bounding_boxes"], training=False)
    assert np.isfinite(history.history["loss"][-1])
    assert float(last["loss"]) < float(first["loss"])

    path = tmp_path / "ssd.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is cls and loaded.get_config() == model.get_config()
    raw = np.random.default_rng(1).uniform(0, 255, (1, 90, 150, 3)).astype(np.float32)
    ours, theirs = model.predict_on_batch(raw), loaded.predict_on_batch(raw)
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])


def test_layers_round_trip():
    head = SSDHead(3, (4, 6), head_type="depthwise", name="head")
    features = (np.ones((1, 4, 4, 8), np.float32), np.ones((1, 2, 2, 16), np.float32))
    head.build([f.shape for f in features])
    assert_layer_round_trip(head, (list(features),))
    assert_layer_round_trip(L2Normalization(20.0), (np.ones((1, 2, 2, 4), np.float32),))


def test_fixed_resize_stretches_each_axis():
    transform = ImageTransform((300, 300), "fixed", size_divisible=1)
    frame, size = transform.resize(np.zeros((1, 194, 259, 3), np.float32))
    assert tuple(frame.shape) == (1, 300, 300, 3) and tuple(int(s) for s in size) == (300, 300)
    (h, w), _ = transform.training_size(194, 259, 1.5)
    assert (int(h), int(w)) == (450, 450)
    boxes = transform.map_boxes(np.array([[0, 0, 259, 194]], np.float32), (194, 259), size)
    np.testing.assert_allclose(boxes, [[0, 0, 300, 300]], rtol=1e-6)
    # the training pipeline's resize: the same stretch, boxes on the same pixels
    image = tf.zeros((194, 259, 3), tf.uint8)
    box = tf.constant([[25.9, 19.4, 129.5, 97.0]])
    resized, mapped, _ = resize_crop_pad(image, box, transform)
    assert tuple(resized.shape) == (300, 300, 3)
    np.testing.assert_allclose(mapped, [[30.0, 30.0, 150.0, 150.0]], rtol=1e-5)


def test_each_ground_truth_claims_its_best_default_box():
    """Matching: IoU >= 0.5 matches the best ground truth; a ground truth whose best default
    box is below 0.5 still claims it, and when two claim the same box the later one wins."""
    anchors = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 40, 40], [50, 50, 60, 60]])
    gt = np.array(
        [
            [[0, 0, 10, 11], [21, 21, 23, 23], [22, 22, 24, 24], [0, 0, 0, 0]],
        ],
        np.float32,
    )
    valid = np.array([[True, True, True, False]])
    head = SSDHead(2, (4,))
    matches = np.asarray(head.match(anchors.astype(np.float32), gt, valid))
    # anchor 0: IoU 10/11 with gt 0; anchor 2: best of gts 1 and 2 (IoU 0.01), gt 2 claims last
    np.testing.assert_array_equal(matches, [[0, -1, 2, -1]])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_parameter_count_equals_the_published_file(arch):
    """91 COCO logits: as many trainable weights as torchvision's COCO_V1 file holds."""
    published = {"ssd300_vgg16": 35_641_826, "ssdlite320_mobilenet_v3_large": 3_440_060}
    model = build(arch)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == published[arch]


def test_a_frame_of_varying_size_is_refused():
    with pytest.raises(ValueError, match="resize_mode"):
        SSD(num_classes=2, backbone="tiny", image_size=(128, 128), resize_mode="min_max")
