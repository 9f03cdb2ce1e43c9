"""Plain functions shared by the tests: a NumPy IoU reference, the tiny detector, and a check
that a layer survives its config (``assert_layer_round_trip``), and the tie check of the tests
that compare two frameworks' detections (``perturbed_detections``, ``tie_decided``)."""

from __future__ import annotations

import inspect

import keras
import numpy as np

from kdetect.models.faster_rcnn import FasterRCNN

# Noise (pixel values, 0..255) that moves an imported MobileNetV3 detector's boxes by up to
# 0.02-0.07 px and its scores by ~3e-4: a little more than the most that two frameworks' (or two
# runtimes') float32 rounding moved them on any CPU we measured (0.034 px, 2.8e-4).
TIE_AMPLITUDE = 1e-3

# A detector small enough for CPU tests: the tiny backbone at 64x96 with few proposals and RoIs.

TINY = dict(
    num_classes=3,
    backbone="tiny",
    fpn=True,
    image_size=(64, 96),
    anchor_sizes=((8,), (16,), (32,), (64,), (128,)),
    fpn_channels=32,
    box_head_units=64,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=32,
    box_detections_per_img=20,
    # A random model scores every class near 1/4: keep detections so the contract is exercised.
    box_score_thresh=0.0,
    seed=1,
)


def tiny_model(**overrides) -> FasterRCNN:
    """The ``TINY`` detector, with ``overrides`` of its arguments."""
    return FasterRCNN(**{**TINY, **overrides})


def tiny_batch(batch_size=2, with_boxes=True):
    """A training batch at ``TINY``'s 64x96 frame: two painted boxes per image (or none)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, 64, 96, 3)).astype("float32")
    boxes = np.zeros((batch_size, 4, 4), "float32")
    labels = -np.ones((batch_size, 4), "int32")
    if with_boxes:
        boxes[:, 0] = [10, 8, 40, 30]
        boxes[:, 1] = [50, 20, 90, 60]
        labels[:, :2] = [0, 2]
        images[:, 8:30, 10:40] = [255, 0, 0]
        images[:, 20:60, 50:90] = [0, 0, 255]
    return {"images": images, "bounding_boxes": {"boxes": boxes, "labels": labels}}


def ref_iou(a, b) -> float:
    """IoU of two ``xyxy`` boxes in plain Python; degenerate boxes have area 0 (IoU 0)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def ref_iou_matrix(boxes1, boxes2) -> np.ndarray:
    """float64 [N, M] IoU of every box of ``boxes1`` with every box of ``boxes2``."""
    iou = [[ref_iou(a, b) for b in boxes2] for a in boxes1]
    return np.array(iou, np.float64).reshape(len(boxes1), len(boxes2))


def _outputs_equal(first, second) -> None:
    for x, y in zip(keras.tree.flatten(first), keras.tree.flatten(second), strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y))


def assert_layer_round_trip(layer, inputs=None, **call_kwargs):
    """``layer`` survives its config: the config names every constructor argument,
    ``from_config(get_config())`` and Keras' serialisation give a layer of the same config, and
    (given ``inputs``, a tuple of positional arguments) the rebuilt layer with the same weights
    computes the same outputs. Returns the rebuilt layer."""
    config = layer.get_config()
    parameters = inspect.signature(type(layer).__init__).parameters.values()
    named = [p.name for p in parameters if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
    assert not [name for name in named if name not in config], "get_config misses arguments"
    rebuilt = type(layer).from_config(config)
    assert rebuilt.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == config
    if inputs is not None:
        expected = layer(*inputs, **call_kwargs)
        got = rebuilt(*inputs, **call_kwargs)
        if layer.weights:
            rebuilt.set_weights(layer.get_weights())
            got = rebuilt(*inputs, **call_kwargs)
        _outputs_equal(expected, got)
    return rebuilt


# --- Decisions that float rounding takes either way --------------------------------------------
def perturbed_detections(predict, image, trials: int = 6, amplitude: float = TIE_AMPLITUDE):
    """``predict`` (float pixels [H, W, 3] -> (boxes, scores, labels)) on ``trials`` copies of
    ``image`` with uniform noise of +-``amplitude`` pixel values (0..255 scale): the decisions a
    different framework's float rounding could take the other way show up as detections that
    come and go between copies."""
    rng = np.random.default_rng(0)
    pixels = np.asarray(image, np.float32)
    return [
        predict(pixels + rng.uniform(-amplitude, amplitude, pixels.shape).astype(np.float32))
        for _ in range(trials)
    ]


def has_detection(detections, box, score, label, box_tol: float, score_tol: float) -> bool:
    """Whether (boxes, scores, labels) holds a detection of ``label`` within the tolerances."""
    boxes, scores, labels = detections
    return bool(
        np.any(
            (labels == label)
            & (np.abs(scores - score) <= score_tol)
            & np.all(np.abs(boxes - box) <= box_tol, axis=-1)
        )
    )


def tie_decided(present: bool, detection, perturbed, box_tol: float, score_tol: float) -> bool:
    """Whether a detection the model gives (``present``) or lacks (not ``present``) is given and
    lacked by the model itself under :func:`perturbed_detections`, i.e. a tie."""
    return any(has_detection(d, *detection, box_tol, score_tol) != present for d in perturbed)
