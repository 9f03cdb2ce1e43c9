"""The evaluation entry points: score detections (from a file or a model) against ground truth.

* :func:`evaluate_detections` - in-memory ground truth and detections -> metrics dict.
* :func:`evaluate_offline` - a dataset folder (or COCO JSON) and a detections file; no model, no
  images, no TensorFlow.
* :func:`evaluate_model` - runs ``model.predict`` over the images of a split, then scores it.

All return the same dict for a given metric (see ``docs/evaluation.md``):
``voc07``/``voc``: ``metric, mAP, per_class, num_ground_truth, num_images, num_detections,
iou_threshold``; ``coco``: ``metric, AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm,
ARl, per_class, num_images, num_detections``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdetect.data.batching import consecutive_batches
from kdetect.data.images import load_image, verify_images
from kdetect.data.records import Annotations, Record
from kdetect.evaluation.coco import coco_evaluate, recall_thresholds
from kdetect.evaluation.detections import (
    ImageDetections,
    detections_from_coco_results,
    detections_from_predictions,
    read_detections_file,
)
from kdetect.evaluation.groundtruth import GroundTruth, annotations_to_coco, load_ground_truth
from kdetect.evaluation.thresholds import confusion_matrix, f1_curves
from kdetect.evaluation.voc import VOC_METRICS, voc_evaluate
from kdetect.models.outputs import split_detections  # NumPy only: no TensorFlow
from kdetect.plumbing.errors import KdetectError

METRICS = ("voc07", "voc", "coco")


def check_metric(metric: str) -> str:
    """Validate a metric name (``voc07``, ``voc`` or ``coco``)."""
    if metric not in METRICS:
        raise KdetectError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    return metric


def headline(metrics: dict) -> float:
    """The single number of a metrics dict: ``mAP`` for VOC metrics, ``AP`` for COCO."""
    value = metrics["mAP"] if metrics["metric"] in VOC_METRICS else metrics["AP"]
    return 0.0 if value is None else float(value)


def evaluate_detections(
    annotations: Annotations | GroundTruth,
    detections: Sequence[ImageDetections],
    metric: str = "voc07",
    plots_dir: str | os.PathLike | None = None,
) -> dict:
    """Score per-image detections (one per record, same order) against the ground truth.

    ``annotations`` may be a :class:`GroundTruth` holding the source COCO JSON; COCO metrics then
    use that JSON (its areas and crowd regions) instead of a conversion of the records.
    ``metrics["f1"]`` is the best-F1 score threshold (:mod:`kdetect.evaluation.thresholds`). With
    ``plots_dir``, one precision-recall PNG per class, ``f1_curve.png`` and
    ``confusion_matrix.png`` (at that threshold) are written there.
    """
    check_metric(metric)
    gt = annotations if isinstance(annotations, GroundTruth) else GroundTruth(annotations)
    records = gt.annotations.records
    if len(detections) != len(records):
        raise ValueError(f"{len(detections)} detection sets for {len(records)} images")
    truth = [(r.boxes, r.labels, r.difficult) for r in records]
    found = [(d.boxes, d.scores, d.labels) for d in detections]
    if metric in VOC_METRICS:
        metrics, voc_curves = voc_evaluate(gt.annotations.classes, truth, found, metric)
        curves = {n: (c.recall, c.precision) for n, c in voc_curves.items() if c.ap is not None}
    else:
        if gt.coco is not None:
            dataset, image_ids, category_ids = gt.coco, gt.image_ids, gt.category_ids
        else:
            dataset, image_ids, category_ids = annotations_to_coco(gt.annotations)
        results = to_coco_results(detections, image_ids, category_ids)
        metrics, p50, _ = coco_evaluate(dataset, results)
        curves = _coco_curves(p50)
    f1 = f1_curves(gt.annotations.classes, truth, found)
    metrics["f1"] = f1["best"]
    if plots_dir is not None:
        from kdetect.drawing.plots import plot_confusion_matrix, plot_f1_curves
        from kdetect.evaluation.report import plot_pr_curves

        plot_pr_curves(curves, metrics, plots_dir)
        plot_f1_curves(f1, Path(plots_dir) / "f1_curve.png")
        matrix = confusion_matrix(
            len(gt.annotations.classes), truth, found, f1["best"]["threshold"]
        )
        plot_confusion_matrix(
            matrix,
            gt.annotations.classes,
            f1["best"]["threshold"],
            Path(plots_dir) / "confusion_matrix.png",
        )
        _plot_examples(gt.annotations, detections, f1["best"]["threshold"], Path(plots_dir))
    return metrics


#: Validation images drawn side by side (ground truth | predictions) in ``val_examples.png``.
EXAMPLES = 6


def _plot_examples(annotations: Annotations, detections, threshold: float, folder: Path) -> None:
    """``val_examples.png``: the first :data:`EXAMPLES` images with boxes, ground truth against
    the detections scoring at least ``threshold``."""
    from kdetect.drawing.plots import plot_ground_truth_vs_predictions
    from kdetect.drawing.visualize import draw_detections

    pairs, titles = [], []
    for record, found in list(zip(annotations.records, detections, strict=True))[:EXAMPLES]:
        try:
            image = _load_record_image(record)
        except (OSError, KdetectError):
            continue
        keep = np.asarray(found.scores) >= threshold
        truth = draw_detections(image, record.boxes, record.labels, None, annotations.classes)
        drawn = draw_detections(
            image,
            np.asarray(found.boxes)[keep],
            np.asarray(found.labels)[keep],
            np.asarray(found.scores)[keep],
            annotations.classes,
        )
        pairs.append((np.asarray(truth), np.asarray(drawn)))
        titles.append(os.path.basename(str(record.filename)))
    if pairs:
        plot_ground_truth_vs_predictions(pairs, titles, folder / "val_examples.png")


def to_coco_results(
    detections: Sequence[ImageDetections], image_ids: Sequence, category_ids: Sequence[int]
) -> list[dict]:
    """Per-image detections -> COCO results (``bbox`` as ``[x, y, w, h]``)."""
    results = []
    for image_id, dets in zip(image_ids, detections, strict=True):
        for box, score, label in zip(dets.boxes, dets.scores, dets.labels, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_ids[int(label)]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results


def _coco_curves(p50: dict) -> dict:
    recall = recall_thresholds()
    return {name: (recall, p) for name, p in p50.items() if p is not None}


def evaluate_offline(
    ground_truth: str | os.PathLike,
    detections: str | os.PathLike,
    metric: str | None = None,
    format: str | None = None,
    split: str = "val",
    plots_dir: str | os.PathLike | None = None,
    on_invalid_box: str = "error",
) -> dict:
    """Score a detections file against a dataset split, without a model or images.

    Args:
        ground_truth: dataset folder, or for COCO the instances JSON itself.
        detections: kdetect prediction JSON lines, or a COCO results JSON list.
        metric: ``voc07``, ``voc`` or ``coco``; ``None`` = ``coco`` for COCO ground truth,
            ``voc07`` otherwise.
        format: ``voc``, ``coco`` or ``csv``; ``None`` guesses from the path.
        split: the split whose annotations to read (``ImageSets/Main/<split>.txt``,
            ``instances_<split>.json``, ``<split>.csv``).
        plots_dir: where to write per-class precision-recall PNGs (optional).
        on_invalid_box: what the reader does with invalid ground-truth boxes (``error``,
            ``clip``, ``drop``).
    """
    if metric is not None:
        check_metric(metric)
    gt = load_ground_truth(ground_truth, format, split, on_invalid_box=on_invalid_box)
    if metric is None:
        metric = "coco" if gt.coco is not None else "voc07"
    check_metric(metric)
    parsed = read_detections_file(detections)
    if parsed.kind == "coco":
        if gt.coco is not None:
            dets = detections_from_coco_results(
                parsed, gt.annotations, gt.category_names, gt.image_ids
            )
            if metric == "coco":
                # Hand the results to pycocotools untouched (no xywh -> xyxy -> xywh round trip),
                # exactly what COCOeval(gt, gt.loadRes(results), "bbox") sees.
                metrics, p50, _ = coco_evaluate(gt.coco, parsed.rows)
                if plots_dir is not None:
                    from kdetect.evaluation.report import plot_pr_curves

                    plot_pr_curves(_coco_curves(p50), metrics, plots_dir)
                return metrics
        else:
            dets = detections_from_coco_results(parsed, gt.annotations)
    else:
        dets = detections_from_predictions(parsed, gt.annotations)
    return evaluate_detections(gt, dets, metric, plots_dir)


def _load_record_image(record: Record) -> np.ndarray:
    if record.image is not None:
        return np.asarray(record.image)
    return load_image(record.filename)


def _call_predict(model, batch: np.ndarray) -> dict:
    predict = model.predict
    try:
        parameters = inspect.signature(predict).parameters.values()
    except (TypeError, ValueError):
        parameters = []
    # Keras' predict (and FasterRCNN's, which passes **kwargs on) prints a progress bar unless
    # verbose=0.
    takes_verbose = any(
        p.name == "verbose" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )
    out = predict(batch, verbose=0) if takes_verbose else predict(batch)
    return {key: np.asarray(value) for key, value in out.items()}


def predict_detections(
    model,
    annotations: Annotations,
    batch_size: int = 1,
    progress: bool = True,
) -> list[ImageDetections]:
    """Run ``model.predict`` over every record's image; returns one detection set per record.

    Consecutive images of equal size are batched up to ``batch_size``; each image is fed at its
    own size (so the returned boxes are already in its pixels). The model returns
    ``{"boxes" [B, N, 4], "confidence" [B, N], "labels" [B, N] (-1 = padding),
    "num_detections" [B]}``.
    """
    records = annotations.records
    if progress:
        from rich.progress import track

        records = track(records, description="Evaluating", transient=True)
    images = (_load_record_image(record) for record in records)
    out: list[ImageDetections] = []
    for batch in consecutive_batches(images, batch_size):
        outputs = _call_predict(model, np.stack(batch))
        for found in split_detections(outputs, len(annotations.classes)):
            out.append(ImageDetections(found.boxes, found.confidence, found.labels))
    return out


def evaluate_model(
    model,
    annotations: Annotations | GroundTruth,
    metric: str = "voc07",
    batch_size: int = 1,
    progress: bool = True,
    plots_dir: str | os.PathLike | None = None,
) -> dict:
    """Run ``model`` over the split's images and score its detections.

    The model's label ids must index ``annotations.classes`` (read the ground truth with the
    model's class list to make sure). Returns the same dict as :func:`evaluate_offline`.
    Every image is verified first; :class:`~kdetect.plumbing.errors.DataErrors` names all bad ones.
    """
    check_metric(metric)
    gt = as_ground_truth(annotations)
    return evaluate_detections(gt, detect_split(model, gt, batch_size, progress), metric, plots_dir)


def as_ground_truth(annotations: Annotations | GroundTruth) -> GroundTruth:
    return annotations if isinstance(annotations, GroundTruth) else GroundTruth(annotations)


def detect_split(
    model, gt: GroundTruth, batch_size: int = 1, progress: bool = True
) -> list[ImageDetections]:
    """Every image of the split verified (all bad ones named at once), then the model's
    detections on each."""
    verify_images([r.filename for r in gt.annotations.records if r.image is None])
    return predict_detections(model, gt.annotations, batch_size, progress)
