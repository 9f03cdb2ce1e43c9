"""Evaluation: VOC AP (devkit-exact), COCO metrics (pycocotools) and ``kdetect evaluate``.

Offline evaluation (a detections file against a dataset split) needs neither a model nor
TensorFlow; :class:`EvaluationCallback` (which imports Keras) is loaded on first use.
"""

from kdetect.evaluation.api import (
    METRICS,
    evaluate_detections,
    evaluate_model,
    evaluate_offline,
    headline,
    predict_detections,
    to_coco_results,
)
from kdetect.evaluation.coco import COCO_KEYS, coco_evaluate
from kdetect.evaluation.detections import ImageDetections, load_detections
from kdetect.evaluation.groundtruth import GroundTruth, load_ground_truth
from kdetect.evaluation.report import plot_pr_curves, print_metrics, write_metrics
from kdetect.evaluation.voc import voc_ap, voc_evaluate, voc_iou

__all__ = [
    "COCO_KEYS",
    "METRICS",
    "EvaluationCallback",
    "GroundTruth",
    "ImageDetections",
    "coco_evaluate",
    "evaluate_detections",
    "evaluate_model",
    "evaluate_offline",
    "headline",
    "load_detections",
    "load_ground_truth",
    "plot_pr_curves",
    "predict_detections",
    "print_metrics",
    "to_coco_results",
    "voc_ap",
    "voc_evaluate",
    "voc_iou",
    "write_metrics",
]


def __getattr__(name):
    if name == "EvaluationCallback":  # imports Keras (and TensorFlow): only when asked for
        from kdetect.evaluation.callback import EvaluationCallback

        return EvaluationCallback
    raise AttributeError(f"module 'kdetect.evaluation' has no attribute {name!r}")
