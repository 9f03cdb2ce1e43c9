"""Faster R-CNN's training losses equal torchvision's, term by term, on the same weights, images
and boxes; kdetect's loss functions equal torch's.

torchvision runs in its own interpreter (``tests/torch_peer.py``) through
``tests/torchvision_reference.py losses``: the checkpoint of ``tests/pretrained_support.py`` in
training mode (batch norm at its statistics) on a batch of two raccoon photos with their real
boxes, resized by torchvision's rules at half its default sizes (``LOSS_RESIZE``: the same code
at a quarter of the pixels; one photo resized by min_size, the other by max_size). Both samplers
are random on both sides, so both are set to keep every candidate: a batch per image larger
than all anchors (RPN) or than all proposals plus the ground truth (RoI head), with a positive
fraction of 1. Everything else is each side's own training path: proposals from the training
counts, the ground truth added to the RoIs, the loss normalisation. kdetect's ``compute_losses``
gets the batch torchvision's transform made (the two photos resized to their own sizes and
padded together, normalised then padded with zeros) as the raw pixels that normalise to it, the
ground truth as that transform scaled it, and each image's content size.
"""

from __future__ import annotations

import numpy as np
import pytest

from kdetect.backbones.networks import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from kdetect.layers import ProposalGenerator
from kdetect.models.faster_rcnn import FasterRCNN
from kdetect.models.transform import ImageTransform
from kdetect.ops.losses import giou_loss, sigmoid_focal_loss, smooth_l1
from tests.layers.test_rpn import _proposal_case
from tests.pretrained_support import (
    ARCHS,
    LOSS_BATCH,
    LOSS_GT_ROWS,
    LOSS_RESIZE,
    PHOTOS,
    RPN_POST_NMS_TRAIN,
    SAMPLE_ALL,
    checkpoint,
    references,
    run_reference,
)

TERMS = {  # kdetect's name: torchvision's
    "rpn_cls_loss": "loss_objectness",
    "rpn_box_loss": "loss_rpn_box_reg",
    "rcnn_cls_loss": "loss_classifier",
    "rcnn_box_loss": "loss_box_reg",
}
RTOL = 1e-4
# MobileNetV3's proposals can differ from torchvision's by float rounding (up to ~0.01 px, on
# slivers of a few pixels at the image border), which its sharpened classifier amplifies: at
# torchvision's full 800 / 1333 resize its RoI classification loss differed by 2e-4 relative
# (fed torchvision's proposals: 1e-6, box loss 6e-6; test_roi_losses_from_torchvision_proposals).
# At LOSS_RESIZE every term agrees to 3e-6; the bound stays for such slivers.
ARCH_RTOL = {"fasterrcnn_mobilenet_v3_large_fpn": 1e-3}
STAGE_RTOL = 5e-5


@pytest.fixture(scope="module", params=ARCHS)
def losses(request, tmp_path_factory):
    """(kdetect's losses, torchvision's record, architecture name)."""
    arch = request.param
    record = dict(np.load(references(tmp_path_factory, arch)["losses"]))
    weights, images, _ = checkpoint(tmp_path_factory, arch)
    # A training frame for the smaller resize (compute_losses gets torchvision's batch as is).
    frame = tuple(-(-LOSS_RESIZE[k] // 32) * 32 for k in ("min_size", "max_size"))
    model = FasterRCNN.from_torchvision(
        weights, arch=arch, **SAMPLE_ALL, **LOSS_RESIZE, image_size=frame
    )
    assert model.proposal_generator.post_nms_top_n_train == RPN_POST_NMS_TRAIN
    # Both sides resize by the same rule: the smaller side to min_size (``tall``), or the
    # larger to max_size (``wide``).
    names = [p[0] for p in PHOTOS]
    for name, size in zip(LOSS_BATCH, record["image_sizes"], strict=True):
        height, width = images[names.index(name)].shape[:2]
        assert tuple(int(v) for v in model.transform.resized_size(height, width)) == tuple(size)
    # The raw pixels that kdetect's normalisation turns into torchvision's batch, padded with
    # raw zeros as kdetect's data pipeline pads (torchvision pads after normalising: given the
    # image sizes, compute_losses pads as prediction does, which is torchvision's padding).
    normalised = np.transpose(record["input"], (0, 2, 3, 1))
    pixels = (normalised * np.float32(IMAGENET_STD_RGB) + np.float32(IMAGENET_MEAN_RGB)) * 255.0
    for i, (height, width) in enumerate(record["image_sizes"]):
        pixels[i, height:], pixels[i, :, width:] = 0.0, 0.0
    gt_boxes = np.zeros((len(LOSS_BATCH), LOSS_GT_ROWS, 4), np.float32)
    gt_labels = np.full((len(LOSS_BATCH), LOSS_GT_ROWS), -1, np.int32)
    for i in range(len(LOSS_BATCH)):
        count = len(record[f"labels_{i}"])
        gt_boxes[i, :count] = record[f"boxes_{i}"]
        gt_labels[i, :count] = record[f"labels_{i}"] - 1  # kdetect label = torchvision's - 1
    targets = {
        "boxes": gt_boxes,
        "labels": gt_labels,
        "image_sizes": record["image_sizes"].astype(np.int32),
    }
    # v2's batch norms train in kdetect; torchvision's side keeps them at their statistics.
    training = model.frozen_batch_norm
    ours = model.compute_losses(pixels.astype(np.float32), targets, training=training)
    ours = {k: float(v) for k, v in ours.items()}

    # The RoI head's stages alone, on torchvision's training-mode proposals.
    _, roi_features = model._feature_maps(normalised, training)
    proposals = np.zeros((len(LOSS_BATCH), RPN_POST_NMS_TRAIN, 4), np.float32)
    valid = np.zeros((len(LOSS_BATCH), RPN_POST_NMS_TRAIN), bool)
    for i in range(len(LOSS_BATCH)):
        count = len(record[f"proposals_{i}"])
        proposals[i, :count], valid[i, :count] = record[f"proposals_{i}"], True
    samples = model.roi_sampler(proposals, valid, gt_boxes, gt_labels)
    class_logits, box_deltas = model._box_branch(roi_features, samples["rois"], training)
    stage = model.box_predictor.losses(class_logits, box_deltas, samples)
    ours["stage"] = dict(zip(("rcnn_cls_loss", "rcnn_box_loss"), map(float, stage)))
    return ours, record, arch


def test_losses_equal_torchvision(losses):
    ours, theirs, arch = losses
    report = []
    for name, torch_name in TERMS.items():
        ref = float(theirs[torch_name])
        rel = abs(ours[name] - ref) / abs(ref)
        report.append(f"{name} {ours[name]:.7g} vs {ref:.7g} (rel {rel:.1e})")
    print(f"{arch}: " + "; ".join(report))
    rtol = ARCH_RTOL.get(arch, RTOL)
    for name, torch_name in TERMS.items():
        assert ours[name] == pytest.approx(float(theirs[torch_name]), rel=rtol), name
    total = sum(float(theirs[t]) for t in TERMS.values())
    assert ours["loss"] == pytest.approx(total, rel=rtol)


def test_roi_losses_from_torchvision_proposals(losses):
    """The RoI sampler (ground truth added), RoIAlign, box head and the predictor's losses on
    torchvision's own proposals: no rounding of an earlier stage in between."""
    ours, theirs, arch = losses
    for name in ("rcnn_cls_loss", "rcnn_box_loss"):
        ref = float(theirs[TERMS[name]])
        print(f"{arch} {name} from torchvision's proposals: {ours['stage'][name]:.7g} vs {ref:.7g}")
        assert ours["stage"][name] == pytest.approx(ref, rel=STAGE_RTOL), name


def test_proposals_clipped_to_each_image():
    """Given each image's own (height, width) as a [B, 2] tensor, the proposal generator clips
    each image's boxes to its own size: what it gives for that image alone at that size."""
    anchors, logits, deltas = _proposal_case(np.random.default_rng(3), image_size=(32, 48))
    generator = ProposalGenerator(40, 30, nms_thresh=0.6, min_size=1.0)
    sizes = np.array([[20, 48], [32, 30]], np.int32)
    proposals, valid = generator(logits, deltas, anchors, sizes, training=True)
    for b, (height, width) in enumerate(sizes):
        alone, alone_valid = generator(
            logits[b : b + 1], deltas[b : b + 1], anchors, (int(height), int(width))
        )
        np.testing.assert_array_equal(np.asarray(valid[b]), np.asarray(alone_valid[0]))
        np.testing.assert_allclose(np.asarray(proposals[b]), np.asarray(alone[0]), atol=1e-5)
        assert np.asarray(proposals[b])[:, 2].max() <= width
        assert np.asarray(proposals[b])[:, 3].max() <= height
    frame, _ = generator(logits, deltas, anchors, (32, 48))
    assert not np.allclose(np.asarray(frame), np.asarray(proposals))


def test_training_padding_like_prediction():
    """Given the image sizes, a ``min_max`` training frame's normalised padding becomes zeros
    (prediction pads normalised images); ``fit`` pads raw pixels in both, so nothing changes."""
    inputs = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
    sizes = np.array([[64, 70], [40, 96]], np.int32)
    padded = np.asarray(ImageTransform((64, 96), "min_max").pad_like_prediction(inputs, sizes))
    for i, (height, width) in enumerate(sizes):
        np.testing.assert_array_equal(padded[i, :height, :width], inputs[i, :height, :width])
        assert not padded[i, height:].any() and not padded[i, :, width:].any()
    fit = ImageTransform((64, 96), "fit").pad_like_prediction(inputs, sizes)
    np.testing.assert_array_equal(np.asarray(fit), inputs)


def test_loss_functions_equal_torch(tmp_path):
    """smooth_l1, sigmoid_focal_loss and giou_loss elementwise against torch / torchvision.ops
    on random inputs (boxes of every overlap, disjoint and nested included)."""
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 50, (2, 400, 2)).astype(np.float32)
    size = rng.uniform(0.5, 40, (2, 400, 2)).astype(np.float32)
    boxes1, boxes2 = (np.concatenate([c, c + s], -1) for c, s in zip(corner, size))
    given = {
        "diff": rng.normal(0, 0.3, (1000,)).astype(np.float32),
        "beta": np.float32(1.0 / 9.0),
        "logits": rng.normal(0, 4, (1000,)).astype(np.float32),
        "targets": (rng.uniform(size=1000) < 0.3).astype(np.float32),
        "alpha": np.float32(0.25),
        "gamma": np.float32(2.0),
        "boxes1": boxes1,
        "boxes2": boxes2,
    }
    np.savez(tmp_path / "in.npz", **given)
    run_reference("loss-functions", tmp_path / "in.npz", tmp_path / "out.npz")
    theirs = np.load(tmp_path / "out.npz")
    ours = {
        "smooth_l1": smooth_l1(given["diff"], float(given["beta"])),
        "focal": sigmoid_focal_loss(given["logits"], given["targets"], 0.25, 2.0),
        "giou": giou_loss(boxes1, boxes2),
    }
    for name, value in ours.items():
        np.testing.assert_allclose(np.asarray(value), theirs[name], rtol=1e-5, atol=1e-6)
