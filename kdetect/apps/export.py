"""Export a trained detector: SavedModel (TF Serving), ONNX (onnxruntime) and TFLite (LiteRT).

Every format takes raw RGB pixels and does everything inside the graph (resizing, normalisation,
the network and NMS) and returns the TensorFlow Object Detection API's outputs
(``detection_boxes``, ``detection_scores``, ``detection_classes``, ``num_detections``); the
contract, the SavedModel's signatures and the single-image ONNX and TFLite files are described
in :mod:`kdetect.models.export_formats`.

The conversion of a built model lives in :mod:`kdetect.models.export_formats` and
:mod:`kdetect.models.converters`, so that ``FasterRCNN.export`` needs nothing from here. This
module adds :func:`export` from a run directory, ``.keras`` or ``.kdet`` file and
:class:`ExportedModel` (an exported file in its runtime), and keeps the names of those modules
importable from ``kdetect.apps.export``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from kdetect.models.converters import open_runtime
from kdetect.models.export_formats import (
    DEFAULT_OPSET,
    FORMATS,
    INPUT_TYPES,
    KERAS_FORMATS,
    OUTPUT_NAMES,
    QUANTIZATIONS,
    SINGLE_IMAGE,
    ExportError,
    check_options,
    convert_onnx,
    convert_tflite,
    detect_function,
    export_model,
    image_tensor_function,
    label_map_pbtxt,
    save_serving_model,
    save_single_image_model,
    serving_functions,
)
from kdetect.plumbing.paths import check_free, check_kind, check_not_input
from kdetect.runs import load_model
from kdetect.runs.checkpoints import (
    DISK_FULL_ERRNOS,
    disk_full_error,
    ensure_space,
    expected_size,
)

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "INPUT_TYPES",
    "KERAS_FORMATS",
    "OUTPUT_NAMES",
    "QUANTIZATIONS",
    "SINGLE_IMAGE",
    "ExportError",
    "ExportedModel",
    "check_options",
    "convert_onnx",
    "convert_tflite",
    "detect_function",
    "export",
    "export_model",
    "image_tensor_function",
    "is_saved_model",
    "label_map_pbtxt",
    "save_serving_model",
    "save_single_image_model",
    "serving_functions",
]


# --- Running exported files ----------------------------------------------------------------
class ExportedModel:
    """A kdetect ``.onnx`` or ``.tflite`` file in its own runtime (onnxruntime on the CPU, the
    LiteRT interpreter with its default XNNPACK delegate), loaded once; ``num_threads``: LiteRT's
    threads (default: every CPU) and onnxruntime's intra-op threads (default: its own).

    Calling it on one image (uint8 ``[H, W, 3]`` or ``[1, H, W, 3]``) returns the file's four
    outputs by name; :meth:`predict` takes a batch and returns what ``FasterRCNN.predict``
    returns (``boxes`` xyxy pixels, ``confidence``, 0-based ``labels`` with -1 padding,
    ``num_detections``), so the evaluation and prediction code can use either.
    """

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        format: str | None = None,
        num_threads: int | None = None,
    ):
        if format is None:
            format = "tflite" if str(model).endswith(".tflite") else "onnx"
        self.format = format
        self._run = open_runtime(model, format, num_threads)

    def __call__(self, image) -> dict:
        image = np.asarray(image, dtype=np.uint8)
        return self._run(image[None] if image.ndim == 3 else image)

    def predict(self, images, verbose=None) -> dict:
        """Detections of each image of ``images`` (uint8 ``[B, H, W, 3]``), one call each."""
        del verbose
        rows = []
        for image in np.asarray(images, dtype=np.uint8):
            out = self(image)
            height, width = image.shape[:2]
            count = int(out["num_detections"][0])
            y1, x1, y2, x2 = np.moveaxis(out["detection_boxes"][0], -1, 0)
            boxes = np.stack([x1 * width, y1 * height, x2 * width, y2 * height], axis=-1)
            labels = out["detection_classes"][0].astype(np.int32) - 1
            labels[count:] = -1
            rows.append((boxes, out["detection_scores"][0], labels, count))
        boxes, confidence, labels, counts = zip(*rows, strict=True)
        return {
            "boxes": np.stack(boxes).astype(np.float32),
            "confidence": np.stack(confidence),
            "labels": np.stack(labels),
            "num_detections": np.asarray(counts, np.int32),
        }


# --- Entry points ----------------------------------------------------------------------------
def is_saved_model(path: str | os.PathLike) -> bool:
    return (Path(path) / "saved_model.pb").is_file()


def export(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    format: str = "saved_model",
    input_type: str = "encoded_image_string_tensor",
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Export the detector of a run directory, ``.keras`` or ``.kdet`` file; returns the output.

    ``format="saved_model"`` writes a SavedModel folder; ``"onnx"`` / ``"tflite"`` write one
    file. An existing file or non-empty folder at ``output`` is replaced only with
    ``overwrite``, and only once the new export is complete; ``output`` may never be (or hold)
    ``model_path``, nor be inside a run directory.
    """
    check_options(format, quantize)
    output = Path(output)
    check_not_input(output, [model_path], replaces=True, whole=[model_path])  # nor in a run
    check_kind(output, "folder" if format == "saved_model" else "file")
    check_free(output, overwrite)
    if is_saved_model(model_path):
        raise ExportError(
            f"{model_path}: a SavedModel; export from the run directory, .keras or .kdet file "
            "it came from (ONNX and TFLite are traced from the Keras model)"
        )
    model, classes = load_model(model_path)
    # The variables' bytes (halved or quartered by quantisation): a full disk is reported
    # before the conversion starts, and one that fills up during it as the same one line.
    needed = expected_size(model) // {"float16": 2, "dynamic": 4}.get(quantize or "", 1)
    ensure_space(output, needed)
    try:
        return export_model(model, output, format, classes, input_type, quantize, opset)
    except (OSError, tf.errors.ResourceExhaustedError) as exc:
        full = getattr(exc, "errno", None) in DISK_FULL_ERRNOS or "No space left" in str(exc)
        if full:
            raise disk_full_error(output, needed, writing=True) from None
        raise
