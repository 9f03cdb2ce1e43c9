"""A Keras callback that reports validation mAP during ``fit()``."""

from __future__ import annotations

import keras

from kdetect.data.records import Annotations
from kdetect.evaluation.api import (
    as_ground_truth,
    check_metric,
    detect_split,
    evaluate_detections,
    headline,
)
from kdetect.evaluation.groundtruth import GroundTruth


class EvaluationCallback(keras.callbacks.Callback):
    """Evaluate the model being trained on a validation split every ``every`` epochs.

    At the end of epoch ``e`` (1-based) with ``e % every == 0`` (and, with ``last_epoch``, always
    at the last epoch of ``fit``), runs :func:`~kdetect.evaluation.evaluate_model` on
    ``annotations`` and adds the headline number (``mAP`` for voc07/voc, ``AP`` for coco) to the
    epoch's logs as ``log_name`` (default ``val_mAP``), so ``History``, ``CSVLogger``,
    TensorBoard, ``ModelCheckpoint(monitor="val_mAP", mode="max")`` and ``EarlyStopping`` all see
    it. Epochs that are skipped log nothing. The full metrics dicts are kept in ``self.results``
    as ``(epoch, metrics)``, and the last evaluation's detections in ``self.last_detections`` as
    ``(epoch, detections)``, so that a final report on the same weights need not predict again.

    Args:
        annotations: the validation split (images are read from ``record.image`` or
            ``record.filename``); label ids must match the model's classes.
        metric: ``voc07``, ``voc`` or ``coco``.
        every: evaluate every this many epochs.
        batch_size: images per ``predict`` call (images of equal size only).
        log_name: the key added to the logs.
        verbose: print the number after each evaluation.
        max_images: evaluate on the first this many images only (None: all; ``Annotations``
            only).
        last_epoch: also evaluate after the last epoch of ``fit`` when ``every`` skips it.
    """

    def __init__(
        self,
        annotations: Annotations | GroundTruth,
        metric: str = "voc07",
        every: int = 1,
        batch_size: int = 1,
        log_name: str = "val_mAP",
        verbose: bool = False,
        max_images: int | None = None,
        last_epoch: bool = True,
    ):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if max_images is not None and len(annotations) > max_images:
            annotations = Annotations(annotations.classes, annotations.records[:max_images])
        self.ground_truth = as_ground_truth(annotations)
        self.metric = check_metric(metric)
        self.every = int(every)
        self.batch_size = int(batch_size)
        self.log_name = log_name
        self.verbose = verbose
        self.last_epoch = last_epoch
        self.results: list[tuple[int, dict]] = []
        self.last_detections: tuple[int, list] | None = None

    def _due(self, epoch: int) -> bool:
        last = self.params.get("epochs") if self.params else None
        return (epoch + 1) % self.every == 0 or (self.last_epoch and epoch + 1 == last)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self._due(epoch):
            return
        detections = detect_split(self.model, self.ground_truth, self.batch_size, progress=False)
        metrics = evaluate_detections(self.ground_truth, detections, self.metric)
        self.results.append((epoch, metrics))
        self.last_detections = (epoch, detections)
        value = headline(metrics)
        if logs is not None:
            logs[self.log_name] = value
        if self.verbose:
            print(f"epoch {epoch + 1}: {self.log_name} = {value:.4f}")
