"""Every layer of kdetect.layers, and FasterRCNN, survives its config (get_config / from_config
and Keras' serialisation), each built with non-default arguments so a forgotten one shows."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest

import kdetect.layers
from kdetect.layers import (
    BatchNormalization,
    BoxPredictor,
    ConvFCBoxHead,
    DenseDetectionDecoder,
    DetectionDecoder,
    FeaturePyramid,
    MatchAndSample,
    MLPBoxHead,
    MultiLevelRoIAlign,
    PipelineLayer,
    ProposalGenerator,
    RoISampler,
    RPNHead,
    RPNTargetAssigner,
)
from kdetect.ops.boxes import BoxCoder
from tests.helpers import assert_layer_round_trip, tiny_model

RNG = np.random.default_rng(0)


def _array(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype("float32")


def _boxes(batch, count, size=48.0):
    corners = np.sort(RNG.uniform(0, size, (batch, count, 2, 2)), axis=2)
    return (
        corners.transpose(0, 1, 3, 2).reshape(batch, count, 4)[..., [0, 2, 1, 3]].astype("float32")
    )


def _pyramid():
    return [_array(1, 16 // s, 24 // s, 4) for s in (1, 2, 4, 8)]


ANCHORS = [_boxes(1, 12)[0], _boxes(1, 6)[0]]
CODER = BoxCoder((2.0, 3.0, 1.5, 1.0), scale_clip=3.0)

# layer class -> (a layer with non-default arguments, positional inputs, keyword inputs)
CASES = {
    BatchNormalization: lambda: (
        BatchNormalization(momentum=0.9, epsilon=1e-3, center=False, name="bn"),
        (_array(2, 4, 4, 3),),
        {},
    ),
    FeaturePyramid: lambda: (
        FeaturePyramid(8, extra_level=False, batch_norm=True, batch_norm_epsilon=1e-3),
        (_pyramid(),),
        {},
    ),
    RPNHead: lambda: (RPNHead(3, channels=8, conv_depth=2), ([_array(1, 4, 6, 5)],), {}),
    MLPBoxHead: lambda: (MLPBoxHead(16), (_array(1, 5, 3, 3, 4),), {}),
    ConvFCBoxHead: lambda: (
        ConvFCBoxHead(conv_channels=(4, 6), units=(8, 7), batch_norm_epsilon=1e-3),
        (_array(1, 5, 3, 3, 4),),
        {},
    ),
    BoxPredictor: lambda: (BoxPredictor(4), (_array(1, 5, 16),), {}),
    RPNTargetAssigner: lambda: (
        RPNTargetAssigner(
            0.6, 0.2, batch_size_per_image=8, positive_fraction=0.25, box_coder=CODER
        ),
        (np.concatenate(ANCHORS), _boxes(2, 3), np.array([[True, True, False]] * 2)),
        {"seed": 5},
    ),
    ProposalGenerator: lambda: (
        ProposalGenerator(
            7,
            5,
            nms_thresh=0.6,
            min_size=0.5,
            score_thresh=0.1,
            box_coder=CODER,
            pre_nms_top_n_train=11,
            post_nms_top_n_train=9,
        ),
        (_array(1, 18), _array(1, 18, 4, scale=0.1), ANCHORS),
        {"image_size": (48, 48)},
    ),
    MultiLevelRoIAlign: lambda: (
        MultiLevelRoIAlign(
            (1, 2, 4, 8),
            output_size=3,
            sampling_ratio=1,
            canonical_size=32.0,
            canonical_level=3,
            min_level=1,
            method="gather",
            aligned=False,
        ),
        (_pyramid(), _boxes(1, 6, size=16.0)),
        {},
    ),
    RoISampler: lambda: (
        RoISampler(0.6, 0.4, batch_size_per_image=8, positive_fraction=0.5, box_coder=CODER),
        (_boxes(2, 6), np.ones((2, 6), bool), _boxes(2, 3), np.array([[0, 2, -1]] * 2)),
        {"seed": 5},
    ),
    DenseDetectionDecoder: lambda: (
        DenseDetectionDecoder(
            score_thresh=0.2, nms_thresh=0.5, detections_per_img=5, topk_candidates=6
        ),
        (
            [_array(1, 12, 3, scale=1.0), _array(1, 4, 3, scale=1.0)],
            [_boxes(1, 12), _boxes(1, 4)],
        ),
        {"image_size": (48, 48)},
    ),
    DetectionDecoder: lambda: (
        DetectionDecoder(
            score_thresh=0.1, nms_thresh=0.4, detections_per_img=6, min_size=0.5, box_coder=CODER
        ),
        (_array(1, 8, 4), _array(1, 8, 3, 4, scale=0.1), _boxes(1, 8), np.ones((1, 8), bool)),
        {"image_size": (48, 48)},
    ),
}


def test_every_layer_class_has_a_case():
    layer_classes = {
        value
        for value in vars(kdetect.layers).values()
        if inspect.isclass(value) and issubclass(value, keras.layers.Layer)
    }
    assert layer_classes - {PipelineLayer, MatchAndSample} == set(CASES)


@pytest.mark.parametrize("layer_class", list(CASES), ids=lambda cls: cls.__name__)
def test_layer_round_trip(layer_class):
    layer, inputs, kwargs = CASES[layer_class]()
    assert_layer_round_trip(layer, inputs, **kwargs)


def test_proposal_generator_training_counts():
    layer, inputs, kwargs = CASES[ProposalGenerator]()
    assert layer(*inputs, **kwargs)[0].shape == (1, 5, 4)
    assert layer(*inputs, **kwargs, training=True)[0].shape == (1, 9, 4)


IMAGES = np.random.default_rng(1).integers(0, 256, (1, 64, 96, 3)).astype("float32")


def test_faster_rcnn_round_trip():
    assert_layer_round_trip(tiny_model(), (IMAGES,))


def test_faster_rcnn_with_injected_stages_round_trips():
    stages = dict(
        rpn_target_assigner=RPNTargetAssigner(0.6, 0.2, 64, 0.4, name="my_targets"),
        proposal_generator=ProposalGenerator(
            60, 30, nms_thresh=0.6, min_size=0.5, pre_nms_top_n_train=150, post_nms_top_n_train=80
        ),
        roi_align=MultiLevelRoIAlign(
            (4, 8, 16, 32), output_size=5, sampling_ratio=1, canonical_size=112.0, method="gather"
        ),
        roi_sampler=RoISampler(0.6, 0.4, 16, 0.5),
        detection_decoder=DetectionDecoder(score_thresh=0.0, nms_thresh=0.4, detections_per_img=7),
    )
    model = tiny_model(**stages)
    for name, layer in stages.items():
        assert getattr(model, name) is layer
    config = model.get_config()
    assert config["box_detections_per_img"] == 7 and config["box_roi_pool_size"] == 5
    assert config["rpn_post_nms_top_n_train"] == 80 and config["rpn_batch_size_per_image"] == 64
    rebuilt = assert_layer_round_trip(model, (IMAGES,))
    assert rebuilt.roi_align.canonical_size == 112.0 and rebuilt.roi_align.method == "gather"
    assert rebuilt.rpn_target_assigner.name == "my_targets"
    assert rebuilt.predict(IMAGES, verbose=0)["boxes"].shape == (1, 7, 4)


def test_injected_roi_align_must_match_the_backbone_strides():
    with pytest.raises(ValueError, match="strides"):
        tiny_model(roi_align=MultiLevelRoIAlign((16,)))
