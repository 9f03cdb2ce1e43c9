"""Dense single-stage detectors (RetinaNet) equal torchvision's: detections, stages, losses.

torchvision runs in its own interpreter (``tests/torch_peer.py``) through
``tests/torchvision_dense_reference.py``: a random model made non-trivial is saved as the
published files are laid out; its ``model.eval()`` detections on real photos, the stages of the
first photo and its training-mode loss dict on photos with their annotated boxes are recorded,
all by one interpreter per architecture (the first photo at torchvision's 800 / 1333, the others
and the loss batch at half that). kdetect imports the file and must agree. A tiny kdetect model
trains, saves and reloads.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdetect.backbones.networks import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from kdetect.layers import FeaturePyramid
from kdetect.layers.dense import DenseDetectionDecoder
from kdetect.models import build
from kdetect.models.fcos import FCOS, FCOSHead
from kdetect.models.retinanet import RetinaNet, RetinaNetHead
from tests.helpers import assert_layer_round_trip
from tests.models.test_pretrained_parity import MIN_IOU, SCORE_TOL, match_detections
from tests.pretrained_support import PHOTOS, RACCOON
from tests.torch_peer import run_torch

REFERENCE = Path(__file__).resolve().parents[1].joinpath("torchvision_dense_reference.py")
ANNOTATIONS = RACCOON.parent / "Annotations"
MODELS = {
    "retinanet_resnet50_fpn": RetinaNet,
    "retinanet_resnet50_fpn_v2": RetinaNet,
    "fcos_resnet50_fpn": FCOS,
}
#: kdetect loss name -> torchvision's key of the same term.
LOSS_KEYS = {
    "cls_loss": "classification",
    "box_loss": "bbox_regression",
    "centerness_loss": "bbox_ctrness",
}
DENSE_PHOTOS = PHOTOS[:3]  # small, tall, wide: torchvision's ResNet50 at 800 px is slow on CPU
LOSS_PHOTOS = ((1, 3), (2, 5))  # (index in DENSE_PHOTOS, torchvision label of its raccoons)
# Half of torchvision's 800 / 1333: the same resize rules and code at a quarter of the pixels
# ("tall" is resized by min_size, "wide" by max_size, as at full size). The loss batch and
# every photo but the first are compared there; the first photo (detections and every stage)
# at the published size.
HALF_RESIZE = {"min_size": 400, "max_size": 667}
FULL_SIZE_PHOTOS = 1  # DENSE_PHOTOS[:1] at 800 / 1333, the others at HALF_RESIZE
LOSS_RTOL = 2e-4
MAX_TIE_SHARE = 0.03
CORNER_TOL = 0.01  # pixels


def run_dense(*args) -> None:
    run_torch(REFERENCE.read_text(), *args, timeout=900)


@pytest.fixture(scope="module", params=list(MODELS))
def parity(request, tmp_path_factory):
    """One torch interpreter per architecture makes the reference model, runs it and records
    its losses: ``{"images", "reference" (per photo index: its run's record), "model" (per
    photo index), "arch", "weights", "losses" (torchvision's record), "targets"}``."""
    if not RACCOON.is_dir():
        pytest.skip("../shared/data/raccoon not available")
    arch = request.param
    folder = tmp_path_factory.mktemp(arch)
    images, files = [], []
    for name, photo, _ in DENSE_PHOTOS:
        array = np.asarray(Image.open(RACCOON / photo).convert("RGB"))
        np.save(folder / f"{name}.npy", array)
        images.append(array)
        files.append(folder / f"{name}.npy")
    weights = folder / "checkpoint.pth"
    # v1's COCO_V1 file predates torchvision 0.13 and has its old module names.
    legacy = ["--legacy-names"] if arch == "retinanet_resnet50_fpn" else []
    half = [f"--{k.replace('_', '-')}={v}" for k, v in HALF_RESIZE.items()]
    full_file, half_file = folder / "reference.npz", folder / "reference_half.npz"
    chain = ["make", arch, weights, *legacy, "--calibrate", *files, "+"]
    chain += ["run", arch, weights, full_file, *files[:FULL_SIZE_PHOTOS], "+"]
    chain += ["run", arch, weights, half_file, *files[FULL_SIZE_PHOTOS:], *half, "+"]
    pairs, targets = [], []
    for index, label in LOSS_PHOTOS:
        rows = _raccoon_boxes(DENSE_PHOTOS[index][1], label)
        np.save(folder / f"boxes_{index}.npy", rows)
        pairs += [files[index], folder / f"boxes_{index}.npy"]
        targets.append(rows)
    chain += ["losses", arch, weights, folder / "losses.npz", *pairs, *half]
    run_dense(*chain)
    full, half_ref = dict(np.load(full_file)), dict(np.load(half_file))
    model = MODELS[arch].from_torchvision(weights, arch=arch)
    half_model = MODELS[arch].from_torchvision(weights, arch=arch, **HALF_RESIZE)
    reference, models = {}, {}
    for index in range(len(DENSE_PHOTOS)):
        at_full = index < FULL_SIZE_PHOTOS
        record, i = (full, index) if at_full else (half_ref, index - FULL_SIZE_PHOTOS)
        reference[index] = {k: record[f"{k}_{i}"] for k in ("boxes", "scores", "labels")}
        models[index] = model if at_full else half_model
    return {
        "images": images,
        "reference": reference,
        "stages": full,
        "model": models,
        "arch": arch,
        "weights": weights,
        "losses": dict(np.load(folder / "losses.npz")),
        "targets": targets,
    }


def _nhwc(array):
    return np.transpose(array, (0, 2, 3, 1))


def _close(ours, theirs, rel: float):
    """Max abs difference within ``rel`` of the reference's largest magnitude."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    scale = max(float(np.abs(theirs).max()), 1e-6)
    assert float(np.abs(ours - theirs).max()) <= rel * scale


def _detections(model, image) -> dict:
    out = model.predict_on_batch(image[None])
    count = int(out["num_detections"][0])
    return {
        "boxes": np.asarray(out["boxes"][0][:count]),
        "scores": np.asarray(out["confidence"][0][:count]),
        "labels": np.asarray(out["labels"][0][:count]) + 1,  # torchvision label = kdetect + 1
    }


def _pair_by_corners(ours: dict, theirs: dict, worst: dict) -> None:
    """Pair the detections left unpaired whose corners agree within CORNER_TOL pixels (same
    label, score within SCORE_TOL): boxes clipped flat or to slivers at the image's edge, whose
    IoU a thousandth of a pixel moves far. They leave ``worst``'s missing / extra lists."""
    extra = list(worst["extra"])
    for i in list(worst["missing"]):
        for j in extra:
            if (
                ours["labels"][j] == theirs["labels"][i]
                and abs(ours["scores"][j] - theirs["scores"][i]) <= SCORE_TOL
                and np.abs(ours["boxes"][j] - theirs["boxes"][i]).max() <= CORNER_TOL
            ):
                worst["missing"].remove(i)
                extra.remove(j)
                worst["by_corners"] = worst.get("by_corners", 0) + 1
                break
    worst["extra"] = extra


@pytest.mark.parametrize("index", range(len(DENSE_PHOTOS)), ids=[p[0] for p in DENSE_PHOTOS])
def test_detections_equal_torchvision(parity, index):
    """Same count, every detection paired (same label, IoU >= 0.99, score within 1e-3; edge
    slivers by their corners); at most MAX_TIE_SHARE unpaired on each side (a final-NMS or top-k
    decision that float rounding takes either way)."""
    arch, theirs = parity["arch"], parity["reference"][index]
    ours = _detections(parity["model"][index], parity["images"][index])
    worst = match_detections(ours, theirs)
    _pair_by_corners(ours, theirs, worst)
    size = "800/1333" if index < FULL_SIZE_PHOTOS else "{min_size}/{max_size}".format(**HALF_RESIZE)
    print(
        f"{arch} {DENSE_PHOTOS[index][0]} at {size}: {len(theirs['scores'])} detections, worst IoU "
        f"{worst['iou']:.6f}, score {worst['score']:.2e}, box {worst['box']:.4f} px, unpaired "
        f"{len(worst['missing'])} torchvision / {len(worst['extra'])} kdetect, paired by "
        f"corners {worst.get('by_corners', 0)}"
    )
    assert len(ours["scores"]) == len(theirs["scores"])
    assert worst["iou"] >= MIN_IOU and worst["score"] <= SCORE_TOL
    allowed = int(MAX_TIE_SHARE * len(theirs["scores"]))
    assert len(worst["missing"]) <= allowed and len(worst["extra"]) <= allowed, worst


def test_some_photo_has_detections(parity):
    assert max(len(r["scores"]) for r in parity["reference"].values()) > 20


def test_every_stage_equals_torchvision(parity):
    """Backbone, pyramid, head and anchors on the first photo at 800 / 1333, each fed
    torchvision's previous stage, so a regression names the stage that broke."""
    ref, model = parity["stages"], parity["model"][0]
    frame = _nhwc(ref["input"])
    body = [_nhwc(ref[f"body_{k}"]) for k in ("0", "1", "2")]
    for ours, theirs in zip(model.backbone(frame), body, strict=True):
        _close(ours, theirs, 1e-4)
    pyramid = [_nhwc(ref[f"fpn_{level}"]) for level in range(5)]
    for ours, theirs in zip(model.fpn(body), pyramid, strict=True):
        _close(ours, theirs, 1e-4)
    logits, *others = model.head(pyramid)
    logits = np.concatenate([np.asarray(x[0]) for x in logits])
    theirs = ref["head_cls_logits"].reshape(len(logits), -1)[:, 1:]  # no label 0
    _close(logits, theirs, 5e-5)
    for ours, key in zip(others, ("head_bbox_regression", "head_bbox_ctrness")):
        ours = np.concatenate([np.asarray(x[0]) for x in ours])
        _close(ours, ref[key].reshape(ours.shape), 5e-5)
    anchors = model.anchors(frame, pyramid)
    np.testing.assert_array_equal(np.concatenate([np.asarray(a) for a in anchors]), ref["anchors"])


def _raccoon_boxes(photo: str, label: int) -> np.ndarray:
    """[M, 5] x1, y1, x2, y2, label of a raccoon photo's VOC annotation."""
    root = ElementTree.parse(ANNOTATIONS / photo.replace(".jpg", ".xml")).getroot()
    rows = []
    for box in root.iter("bndbox"):
        corners = [float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
        rows.append(corners + [float(label)])
    return np.array(rows, np.float32)


def test_losses_equal_torchvision(parity):
    """Each term of torchvision's training-mode loss dict, on the same weights, batch (two
    photos of different sizes, resized at HALF_RESIZE and padded together) and annotated
    boxes."""
    arch, weights = parity["arch"], parity["weights"]
    ref, targets = parity["losses"], parity["targets"]
    # torchvision normalises, then resizes and pads with zeros: raw pixels whose normalisation
    # is that batch give kdetect the same frame.
    mean, std = np.array(IMAGENET_MEAN_RGB), np.array(IMAGENET_STD_RGB)
    raw = ((_nhwc(ref["input"]) * std + mean) * 255.0).astype(np.float32)
    most = max(len(t) for t in targets)
    boxes = np.zeros((len(targets), most, 4), np.float32)
    labels = -np.ones((len(targets), most), np.int32)
    for i, rows in enumerate(targets):
        boxes[i, : len(rows)] = ref[f"boxes_{i}"]
        labels[i, : len(rows)] = rows[:, 4].astype(np.int32) - 1  # kdetect = torchvision - 1
    model = MODELS[arch].from_torchvision(weights, arch=arch, frozen_batch_norm=True)
    ours = model.compute_losses(raw, {"boxes": boxes, "labels": labels}, training=True)
    names = {name: LOSS_KEYS[name] for name in model.LOSS_NAMES[1:]}
    assert len(names) == len([k for k in ref if k.startswith("loss_")])
    worst = {}
    for name, key in names.items():
        theirs = float(ref[f"loss_{key}"])
        worst[name] = abs(float(ours[name]) - theirs) / abs(theirs)
    print(f"{arch} losses: relative differences {worst}")
    for name, key in names.items():
        np.testing.assert_allclose(float(ours[name]), float(ref[f"loss_{key}"]), rtol=LOSS_RTOL)
    total = sum(float(ref[f"loss_{key}"]) for key in names.values())
    np.testing.assert_allclose(float(ours["loss"]), total, rtol=LOSS_RTOL)


# --- kdetect's own small dense detectors -----------------------------------------------------
TINY = dict(num_classes=3, backbone="tiny", image_size=(128, 128), resize_mode="fit", seed=1)
TINY_OPTIONS = {
    "retinanet": dict(
        fpn_channels=32,
        anchor_sizes=tuple((s, s * 1.25, s * 1.6) for s in (8.0, 16.0, 32.0, 64.0, 128.0)),
        head_group_norm=False,  # v1's head (kdetect's default has v2's GroupNorm)
    ),
    "retinanet_v2": dict(
        fpn_channels=32,
        anchor_sizes=tuple((s, s * 1.25, s * 1.6) for s in (8.0, 16.0, 32.0, 64.0, 128.0)),
        head_group_norm=True,
        box_loss="giou",
        extra_levels_from="c5",
    ),
    "fcos": dict(fpn_channels=32, anchor_sizes=(8.0, 16.0, 32.0, 64.0, 128.0), score_thresh=0.05),
}


def _tiny_batch():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 128, 128, 3)).astype("float32")
    boxes = np.zeros((2, 3, 4), "float32")
    labels = -np.ones((2, 3), "int32")
    boxes[:, 0], boxes[:, 1] = [10, 8, 60, 50], [70, 60, 120, 110]
    labels[:, :2] = [0, 2]
    images[:, 8:50, 10:60] = [255, 0, 0]
    images[:, 60:110, 70:120] = [0, 0, 255]
    return {"images": images, "bounding_boxes": {"boxes": boxes, "labels": labels}}


@pytest.mark.parametrize("variant", list(TINY_OPTIONS))
def test_tiny_model_trains_saves_and_reloads(variant, tmp_path):
    """kdetect's own small detector trains (finite losses that fall), and its saved .keras file
    reloads with the same config and predicts the same."""
    model = build(variant.removesuffix("_v2"), **TINY, **TINY_OPTIONS[variant])
    batch = _tiny_batch()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    data = tf.data.Dataset.from_tensors(batch).repeat(8)
    # Training-mode losses (batch statistics; the moving averages lag a few steps behind).
    first = model.compute_losses(batch["images"], batch["bounding_boxes"], training=True)
    history = model.fit(data, epochs=3, verbose=0)
    later = model.compute_losses(batch["images"], batch["bounding_boxes"], training=True)
    assert all(np.isfinite(float(v)) for v in later.values())
    assert all(np.isfinite(v).all() for v in history.history.values())
    assert float(later["loss"]) < float(first["loss"])
    assert set(history.history) == set(type(model).LOSS_NAMES)
    expected = model.predict_on_batch(batch["images"])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    got = loaded.predict_on_batch(batch["images"])
    for key in expected:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]))


def test_dense_layers_round_trip():
    rng = np.random.default_rng(0)
    scores = [rng.uniform(0, 1, (2, n, 3)).astype("float32") for n in (40, 10)]
    boxes = [np.sort(rng.uniform(0, 60, (2, n, 4)), -1).astype("float32") for n in (40, 10)]
    boxes = [b[..., [0, 1, 2, 3]] for b in boxes]
    decoder = DenseDetectionDecoder(0.3, 0.5, 20, 15)
    assert_layer_round_trip(decoder, (scores, boxes), image_size=(64, 64))
    out = decoder(scores, boxes, image_size=(64, 64))
    assert out["boxes"].shape == (2, 20, 4)
    assert np.all(np.asarray(out["confidence"])[np.asarray(out["labels"]) >= 0] > 0.3)
    pyramid = FeaturePyramid(32, extra_level=False, input_strides=(8, 16, 32), extra_convs="c5")
    features = [rng.normal(size=(1, 16 // 2**i, 16 // 2**i, 8 * 2**i)).astype("float32")
                for i in range(3)]  # fmt: skip
    pyramid.build([f.shape for f in features])
    outputs = assert_layer_round_trip(pyramid, (features,))(features)
    assert [tuple(o.shape[1:3]) for o in outputs] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    head = RetinaNetHead(9, 3, 32, group_norm=True, box_loss="giou")
    head.build(None)
    assert_layer_round_trip(head, ([np.ones((1, 4, 4, 32), "float32")],))
    fcos_head = FCOSHead(3, 32)
    fcos_head.build(None)
    assert_layer_round_trip(fcos_head, ([np.ones((1, 4, 4, 32), "float32")],))
