"""An imported torchvision checkpoint gives torchvision's own detections, stage by stage.

torchvision runs in its own interpreter (``tests/torch_peer.py``) through
``tests/torchvision_reference.py``: it builds a random ``fasterrcnn_resnet50_fpn`` made
non-trivial (batch-norm statistics calibrated on real photos, sharpened classifier), saves it as
the published COCO_V1 file is laid out, and records ``model.eval()`` on each photo alone plus
every intermediate stage of the first one (``tests/pretrained_support.py`` ``PARITY_PHOTOS``:
every resize case for MobileNetV3, the cases split between the two ResNets). kdetect imports
the file and must agree.
"""

from __future__ import annotations

import numpy as np
import pytest

from kdetect.models.faster_rcnn import FasterRCNN
from kdetect.ops.boxes import pairwise_iou
from tests.helpers import perturbed_detections, tie_decided
from tests.pretrained_support import ARCHS, PARITY_PHOTOS, PHOTOS, checkpoint, references

# Tolerances of the parity claim (see docs/pretrained.md).
MIN_IOU = 0.99
SCORE_TOL = 1e-3
# A final-NMS decision that float32 rounding may take either way: an IoU this close to the
# threshold (the two frameworks' boxes differ by ~1e-4 px, which moves an IoU by ~1e-5).
NMS_TIE = 1e-4
NMS_THRESH = 0.5
MAX_TIE_SHARE = 0.03
# A tie decided elsewhere (an RPN score or NMS boundary) shows as a detection that comes and goes
# when kdetect runs on copies of the photo with rounding-sized noise (tests/helpers.py).
TIE_BOX_TOL = 0.5
# (architecture, photo name) of each detection comparison.
CASES = [(arch, name) for arch in ARCHS for name in PARITY_PHOTOS[arch]]


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """``parity(arch)`` -> (images by photo name, reference outputs, imported model, arch),
    made once per architecture in this module; the reference's detections of
    PARITY_PHOTOS[arch][i] are ``boxes_<i>`` etc."""
    made = {}

    def get(arch):
        if arch not in made:
            reference = dict(np.load(references(tmp_path_factory, arch)["run"]))
            weights, images, _ = checkpoint(tmp_path_factory, arch)
            model = FasterRCNN.from_torchvision(weights, arch=arch)
            named = {p[0]: image for p, image in zip(PHOTOS, images, strict=True)}
            made[arch] = named, reference, model, arch
        return made[arch]

    yield get
    made.clear()


def match_detections(ours: dict, theirs: dict) -> dict:
    """Pair each torchvision detection with an unused kdetect one of the same label (IoU >=
    MIN_IOU, score within SCORE_TOL, best IoU first).

    Returns the worst IoU, score and box differences of the pairs, and the unpaired indices of
    each side (``missing``: torchvision's, ``extra``: kdetect's).
    """
    boxes, scores, labels = theirs["boxes"], theirs["scores"], theirs["labels"]
    iou = np.asarray(pairwise_iou(boxes, ours["boxes"])) if len(boxes) else None
    used = np.zeros(len(ours["boxes"]), bool)
    worst = {"iou": 1.0, "score": 0.0, "box": 0.0, "missing": [], "extra": []}
    for i in np.argsort(-scores, kind="stable"):
        candidates = (ours["labels"] == labels[i]) & ~used & (iou[i] >= MIN_IOU)
        candidates &= np.abs(ours["scores"] - scores[i]) <= SCORE_TOL
        if not candidates.any():
            worst["missing"].append(int(i))
            continue
        j = int(np.argmax(np.where(candidates, iou[i], -1.0)))
        used[j] = True
        worst["iou"] = min(worst["iou"], float(iou[i, j]))
        worst["score"] = max(worst["score"], float(abs(ours["scores"][j] - scores[i])))
        worst["box"] = max(worst["box"], float(np.abs(ours["boxes"][j] - boxes[i]).max()))
    worst["extra"] = [int(j) for j in np.flatnonzero(~used)]
    return worst


def _unexplained(side: dict, index: int, other: dict, other_unpaired: list[int]) -> bool:
    """Whether detection ``index`` of ``side``, absent from ``other``, has no float-rounding
    explanation: (a) in ``other`` a higher-scoring detection of its label overlaps it at an IoU
    within NMS_TIE of the threshold (suppressed there by a tie); (b) it overlaps above the
    threshold a higher-scoring detection of ``other`` that ``side`` lacks (the tie's
    consequence); (c) it sits at the top-N cut (``other`` is full and scores its last one
    within SCORE_TOL of it)."""
    box, score, label = side["boxes"][index], side["scores"][index], side["labels"][index]
    same = (other["labels"] == label) & (other["scores"] > score)
    iou = np.asarray(pairwise_iou(box[None], other["boxes"]))[0] if len(other["boxes"]) else []
    if np.any(same & (np.abs(iou - NMS_THRESH) < NMS_TIE)):
        return False
    unpaired = np.zeros(len(other["boxes"]), bool)
    unpaired[other_unpaired] = True
    if np.any(same & unpaired & (iou > NMS_THRESH)):
        return False
    full = len(other["scores"]) == 100
    return not (full and score <= other["scores"].min() + SCORE_TOL)


def _not_flipping(model, image, theirs, lost, ours, gained) -> tuple[list[int], list[int]]:
    """The torchvision-only (``lost``) and kdetect-only (``gained``) detections that kdetect
    itself never gains or loses on noisy copies of ``image`` (not ties)."""

    def predict(pixels):
        found = _kdetect_detections(model, pixels)
        return found["boxes"], found["scores"], found["labels"]

    noisy = perturbed_detections(predict, image)

    def detection(side, i):
        return side["boxes"][i], side["scores"][i], side["labels"][i]

    def flips(side, i, present):
        return tie_decided(present, detection(side, i), noisy, TIE_BOX_TOL, SCORE_TOL)

    return (
        [i for i in lost if not flips(theirs, i, False)],
        [j for j in gained if not flips(ours, j, True)],
    )


def _kdetect_detections(model, image) -> dict:
    out = model.predict_on_batch(image[None])
    count = int(out["num_detections"][0])
    return {
        "boxes": np.asarray(out["boxes"][0][:count]),
        "scores": np.asarray(out["confidence"][0][:count]),
        "labels": np.asarray(out["labels"][0][:count]) + 1,  # torchvision label = kdetect + 1
    }


@pytest.mark.parametrize("arch, photo", CASES, ids=[f"{arch}-{name}" for arch, name in CASES])
def test_detections_equal_torchvision(parity, arch, photo):
    """Same count; every detection paired. The only differences allowed are final-NMS
    decisions at an IoU within NMS_TIE of the threshold (float32 rounding decides them), their
    direct consequences, the top-100 cut, and detections that kdetect itself gains or loses on
    copies of the photo with rounding-sized noise (a tie at an earlier boundary), at most
    MAX_TIE_SHARE of the detections."""
    images, reference, model, _ = parity(arch)
    index = PARITY_PHOTOS[arch].index(photo)
    theirs = {k: reference[f"{k}_{index}"] for k in ("boxes", "scores", "labels")}
    ours = _kdetect_detections(model, images[photo])
    assert len(theirs["scores"]) > 10, "the reference model should detect something"
    worst = match_detections(ours, theirs)
    missing, extra = worst["missing"], worst["extra"]
    print(
        f"{arch} {photo}: {len(theirs['scores'])} detections, worst IoU "
        f"{worst['iou']:.6f}, score {worst['score']:.2e}, box {worst['box']:.4f} px, "
        f"tie-decided: {len(missing)} torchvision / {len(extra)} kdetect"
    )
    assert len(ours["scores"]) == len(theirs["scores"])
    assert worst["iou"] >= MIN_IOU and worst["score"] <= SCORE_TOL
    lost = [i for i in missing if _unexplained(theirs, i, ours, extra)]
    gained = [j for j in extra if _unexplained(ours, j, theirs, missing)]
    if lost or gained:
        lost, gained = _not_flipping(model, images[photo], theirs, lost, ours, gained)
        print(f"  not final-NMS ties: {worst}; not flipping under noise: {lost} {gained}")
    assert not lost, worst
    assert not gained, worst
    assert len(missing) <= MAX_TIE_SHARE * len(theirs["scores"])


def _nhwc(array):
    return np.transpose(array, (0, 2, 3, 1))


def _close(ours, theirs, rel: float):
    """Max abs difference within ``rel`` of the reference's largest magnitude."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    scale = max(float(np.abs(theirs).max()), 1e-6)
    assert float(np.abs(ours - theirs).max()) <= rel * scale


@pytest.mark.parametrize("arch", ARCHS)
def test_every_stage_equals_torchvision(parity, arch):
    """Each stage on the first photo, fed torchvision's previous stage where they could drift,
    so a regression names the stage that broke."""
    images, ref, model, _ = parity(arch)
    image = images[PARITY_PHOTOS[arch][0]]
    import tensorflow as tf

    from kdetect.backbones.networks import preprocess_images

    # Transform: normalise, resize (torchvision's rounding), pad to 32 after normalising.
    height, width = image.shape[:2]
    new_h, new_w = (int(v) for v in model.transform.resized_size(height, width))
    assert (new_h, new_w) == tuple(ref["image_size"])
    normalised = preprocess_images(image[None], model.backbone_name)
    resized = tf.image.resize(normalised, (new_h, new_w), method="bilinear")
    frame = _nhwc(ref["input"])
    padded = tf.pad(
        resized, [[0, 0], [0, frame.shape[1] - new_h], [0, frame.shape[2] - new_w], [0, 0]]
    )
    _close(padded, frame, 1e-5)

    body = model.backbone(frame)
    for level, feature in enumerate(body):
        _close(feature, _nhwc(ref[f"body_{level}"]), 1e-4)
    levels = len(body)  # 4 for the ResNets, 2 for MobileNetV3
    keys = [str(level) for level in range(levels)] + ["pool"]
    pyramid = model.fpn([_nhwc(ref[f"body_{level}"]) for level in range(levels)])
    for feature, key in zip(pyramid, keys, strict=True):
        _close(feature, _nhwc(ref[f"fpn_{key}"]), 1e-4)

    features = [_nhwc(ref[f"fpn_{key}"]) for key in keys]
    logits, deltas = model.rpn_head(features)
    _close(logits[0], ref["rpn_logits"], 1e-4)
    _close(deltas[0], ref["rpn_deltas"], 1e-4)
    anchors = model._anchors(frame, features)
    np.testing.assert_array_equal(np.concatenate([np.asarray(a) for a in anchors]), ref["anchors"])

    proposals, valid = model.proposal_generator(
        ref["rpn_logits"][None], ref["rpn_deltas"][None], anchors, (new_h, new_w)
    )
    ours = np.asarray(proposals[0])[np.asarray(valid[0])]
    theirs = ref["proposals"]
    assert len(ours) == len(theirs)
    sort = lambda b: b[np.lexsort(b.T[::-1])]  # noqa: E731  (order among equal scores is free)
    np.testing.assert_allclose(sort(ours), sort(theirs), atol=1e-3)

    # crop_and_resize interpolates in normalised coordinates: rounding differs at ~1e-5.
    pooled = model.roi_align([features[i] for i in model._roi_levels], theirs[None])
    _close(pooled[0], _nhwc(ref["pooled"]), 5e-5)
    class_logits, box_deltas = model.box_predictor(model.box_head(_nhwc(ref["pooled"])[None]))
    _close(class_logits[0], ref["class_logits"], 1e-5)
    theirs_deltas = ref["box_regression"].reshape(len(theirs), -1, 4)[:, 1:]  # no background
    _close(box_deltas[0], theirs_deltas, 1e-5)
