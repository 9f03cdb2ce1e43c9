"""Detector building blocks: feature pyramid, RPN, RoI stage, and the decoders of two-stage and
dense single-stage heads."""

from kdetect.layers.base import MatchAndSample, PipelineLayer
from kdetect.layers.batch_norm import BatchNormalization, fuse_batch_norm
from kdetect.layers.box_head import BoxPredictor, ConvFCBoxHead, MLPBoxHead
from kdetect.layers.dense import DenseDetectionDecoder
from kdetect.layers.detection import DetectionDecoder
from kdetect.layers.fpn import FeaturePyramid
from kdetect.layers.roi import MultiLevelRoIAlign, RoISampler
from kdetect.layers.rpn import ProposalGenerator, RPNHead, RPNTargetAssigner

__all__ = [
    "BatchNormalization",
    "BoxPredictor",
    "ConvFCBoxHead",
    "DenseDetectionDecoder",
    "DetectionDecoder",
    "FeaturePyramid",
    "MLPBoxHead",
    "MatchAndSample",
    "MultiLevelRoIAlign",
    "PipelineLayer",
    "ProposalGenerator",
    "RPNHead",
    "RPNTargetAssigner",
    "RoISampler",
    "fuse_batch_norm",
]
