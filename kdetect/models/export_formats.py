"""A detector in export formats: SavedModel (TF Serving), ONNX (onnxruntime) and TFLite (LiteRT).

Every format takes raw RGB pixels and does everything inside the graph: resizing, normalisation,
the network and NMS. Outputs follow the TensorFlow Object Detection API's exported-model contract:

==================  =================  ====================================================
``detection_boxes``   float32 [B, N, 4]  ``[ymin, xmin, ymax, xmax]`` normalised to [0, 1] by
                                         the input image's height and width
``detection_scores``  float32 [B, N]     sorted descending; 0 on padding rows
``detection_classes`` float32 [B, N]     1-based class id (kdetect ``label_id + 1``), 0 on
                                         padding rows (the TF OD API's label-map convention)
``num_detections``    float32 [B]        rows of real detections
==================  =================  ====================================================

``N`` is the model's ``box_detections_per_img``.

The SavedModel has three signatures: ``encoded_image_string_tensor`` (``tf.string [B]`` encoded
JPEG/PNG/GIF/BMP bytes; images may differ in size), ``image_tensor`` (``tf.uint8 [B, H, W, 3]``,
one size per batch) and ``serving_default`` (one of the two, by ``input_type``), plus Keras'
``serve`` endpoint (= ``image_tensor``). ``assets.extra/`` holds ``classes.json`` and a TF OD API
``label_map.pbtxt`` (ids 1..C). TensorFlow's decoder does not apply EXIF orientation.

ONNX and TFLite files take one image, input ``images``: ``uint8 [1, H, W, 3]`` with H and W free.
They are converted (tf2onnx; TensorFlow's TFLite converter with builtin ops only) from a
SavedModel traced for one image with the model's portable ops (RoIAlign by gathers, NMS as
unrolled ``NonMaxSuppressionV4`` calls: no loops), and each file is run once in its runtime
(onnxruntime, LiteRT) before it is kept. The ONNX file carries the class names in its metadata
(``classes``, a JSON list). When a converter cannot handle an op, :class:`ExportError` names it.

This module and :mod:`kdetect.models.converters` take a built model (``FasterRCNN.export`` uses
them); :mod:`kdetect.apps.export` adds exports from run directories and ``ExportedModel``.
TensorFlow and Keras are imported inside the functions, so that :mod:`kdetect.apps.export`'s
``ExportedModel`` (onnxruntime or LiteRT only) does not load them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdetect.models.converters import (
    DEFAULT_OPSET,
    QUANTIZATIONS,
    SINGLE_IMAGE,
    check_quantization,
    convert_onnx,
    convert_tflite,
)
from kdetect.models.outputs import fallback_class_names
from kdetect.plumbing.errors import ExportError
from kdetect.plumbing.paths import atomic_path

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "INPUT_TYPES",
    "KERAS_FORMATS",
    "OUTPUT_NAMES",
    "QUANTIZATIONS",
    "SINGLE_IMAGE",
    "ExportError",
    "check_options",
    "convert_onnx",
    "convert_tflite",
    "detect_function",
    "export_model",
    "image_tensor_function",
    "label_map_pbtxt",
    "save_serving_model",
    "save_single_image_model",
    "serving_functions",
]

FORMATS = ("saved_model", "onnx", "tflite")
#: Keras ``Model.export`` format names -> kdetect's.
KERAS_FORMATS = {"tf_saved_model": "saved_model", "onnx": "onnx", "litert": "tflite"}
INPUT_TYPES = ("encoded_image_string_tensor", "image_tensor")
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


# --- Traceable functions --------------------------------------------------------------------
def detect_function(model):
    """``tf.function`` of ``model.predict_step`` for uint8 ``[B, H, W, 3]`` images of any size.

    Traced once (the input signature has unknown batch, height and width), so calls with new
    image sizes do not retrace. Returns the model's own outputs (``boxes`` xyxy pixels of the
    input, ``confidence``, ``labels``, ``num_detections``).
    """
    import tensorflow as tf

    return tf.function(
        model.predict_step,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
        reduce_retracing=True,
    )


def _od_outputs(detections: dict, height, width) -> dict:
    """kdetect outputs -> TF OD API outputs (normalised yxyx boxes, 1-based float classes)."""
    import tensorflow as tf

    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    x1, y1, x2, y2 = tf.unstack(tf.cast(detections["boxes"], tf.float32), axis=-1)
    boxes = tf.stack([y1 / height, x1 / width, y2 / height, x2 / width], axis=-1)
    labels = tf.cast(detections["labels"], tf.int32)
    valid = labels >= 0
    return {
        "detection_boxes": tf.where(valid[..., None], boxes, 0.0),
        "detection_scores": tf.where(valid, tf.cast(detections["confidence"], tf.float32), 0.0),
        "detection_classes": tf.cast(tf.where(valid, labels + 1, 0), tf.float32),
        "num_detections": tf.cast(detections["num_detections"], tf.float32),
    }


def image_tensor_function(model, batch_size: int | None = None):
    """The ``image_tensor`` serving function: uint8 ``[batch_size, H, W, 3]`` -> OD outputs."""
    import tensorflow as tf

    @tf.function(
        input_signature=[tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name="images")]
    )
    def image_tensor(images):
        shape = tf.shape(images)
        return _od_outputs(model.predict_step(images), shape[1], shape[2])

    return image_tensor


def serving_functions(model) -> dict[str, Any]:
    """The two serving ``tf.function``s of the SavedModel, keyed by input type."""
    import tensorflow as tf

    image_tensor = image_tensor_function(model)
    outputs = image_tensor.get_concrete_function().structured_outputs
    num = outputs["detection_scores"].shape[1]

    def one_image(data):
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        image = tf.ensure_shape(image, [None, None, 3])
        shape = tf.shape(image)
        out = _od_outputs(model.predict_step(image[None]), shape[0], shape[1])
        return {key: value[0] for key, value in out.items()}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def encoded_image_string_tensor(images):
        return tf.map_fn(
            one_image,
            images,
            fn_output_signature={
                "detection_boxes": tf.TensorSpec([num, 4], tf.float32),
                "detection_scores": tf.TensorSpec([num], tf.float32),
                "detection_classes": tf.TensorSpec([num], tf.float32),
                "num_detections": tf.TensorSpec([], tf.float32),
            },
        )

    return {
        "encoded_image_string_tensor": encoded_image_string_tensor,
        "image_tensor": image_tensor,
    }


# --- Writers ---------------------------------------------------------------------------------
def label_map_pbtxt(classes: Sequence[str]) -> str:
    """A TF Object Detection API label map (ids start at 1)."""
    items = [
        f"item {{\n  id: {i}\n  name: {json.dumps(name)}\n  display_name: {json.dumps(name)}\n}}\n"
        for i, name in enumerate(classes, start=1)
    ]
    return "".join(items)


def _class_names(model, classes: Sequence[str] | None) -> list[str]:
    if classes is None:
        return fallback_class_names(getattr(model, "num_classes", 0))
    return list(classes)


def save_serving_model(
    model,
    output: str | os.PathLike,
    classes: Sequence[str] | None = None,
    input_type: str = "encoded_image_string_tensor",
) -> Path:
    """Write ``model`` as a SavedModel with the TF OD API serving signatures; returns the path.

    The folder is built next to ``output`` and renamed into place when complete; an earlier
    ``output`` is removed only then (callers check :func:`kdetect.plumbing.paths.check_free` first).
    """
    import keras

    if input_type not in INPUT_TYPES:
        raise ExportError(
            f"input_type: expected one of {', '.join(INPUT_TYPES)}, got {input_type!r}"
        )
    output = Path(output)
    functions = serving_functions(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, function in functions.items():
        archive.add_endpoint(name, function)
    archive.add_endpoint("serving_default", functions[input_type])
    archive.add_endpoint("serve", functions["image_tensor"])  # what Keras' own export offers
    classes = _class_names(model, classes)
    with atomic_path(output) as tmp:
        archive.write_out(str(tmp), verbose=False)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        (extra / "classes.json").write_text(json.dumps({"classes": classes}, indent=2) + "\n")
        (extra / "label_map.pbtxt").write_text(label_map_pbtxt(classes))
    return output


def save_single_image_model(model, output: str | os.PathLike) -> Path:
    """A SavedModel whose only signature, ``image_tensor``, takes one uint8 ``[1, H, W, 3]``
    image and is traced with the model's portable ops: what the ONNX and TFLite converters
    start from. (Converting from a SavedModel, not from the live function, matters for TFLite:
    it freezes the variables.)"""
    import keras

    with model.portable_ops():
        function = image_tensor_function(model, batch_size=1)
        function.get_concrete_function()
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SINGLE_IMAGE, function)
    archive.write_out(str(output), verbose=False)
    return Path(output)


def check_options(format: str, quantize: str | None) -> None:
    """A clear error for a format or quantisation kdetect does not offer."""
    if format not in FORMATS:
        raise ExportError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if quantize is not None and format != "tflite":
        raise ExportError(f"quantize: applies to the tflite format only (got {format})")
    check_quantization(quantize)


def export_model(
    model,
    output: str | os.PathLike,
    format: str = "saved_model",
    classes: Sequence[str] | None = None,
    input_type: str = "encoded_image_string_tensor",
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write a built ``FasterRCNN`` in ``format`` (see the module docstring); returns ``output``.

    The file or folder appears only when complete (an earlier one is replaced only then).
    """
    check_options(format, quantize)
    classes = _class_names(model, classes)
    if format == "saved_model":
        return save_serving_model(model, output, classes, input_type)
    with tempfile.TemporaryDirectory(prefix="kdetect-export-") as tmp:
        saved = save_single_image_model(model, Path(tmp) / "saved_model")
        if format == "tflite":
            return convert_tflite(saved, output, quantize=quantize)
        return convert_onnx(saved, output, opset=opset, classes=classes)
