"""Export a trained detector: SavedModel (TF Serving), ONNX (onnxruntime) and TFLite (LiteRT).

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
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdetect.errors import KdetectError
from kdetect.native_logs import native_stderr_silenced
from kdetect.paths import atomic_path, check_free, check_kind, check_not_input

FORMATS = ("saved_model", "onnx", "tflite")
#: Keras ``Model.export`` format names -> kdetect's.
KERAS_FORMATS = {"tf_saved_model": "saved_model", "onnx": "onnx", "litert": "tflite"}
INPUT_TYPES = ("encoded_image_string_tensor", "image_tensor")
QUANTIZATIONS = ("float16", "dynamic")
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
DEFAULT_OPSET = 17
_SINGLE_IMAGE = "image_tensor"


class ExportError(KdetectError):
    """A model that cannot be exported in the requested format (names the op and the reason)."""


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
        return [f"class_{i}" for i in range(int(getattr(model, "num_classes", 0)))]
    return list(classes)


def save_serving_model(
    model,
    output: str | os.PathLike,
    classes: Sequence[str] | None = None,
    input_type: str = "encoded_image_string_tensor",
) -> Path:
    """Write ``model`` as a SavedModel with the TF OD API serving signatures; returns the path.

    The folder is built next to ``output`` and renamed into place when complete; an earlier
    ``output`` is removed only then (callers check :func:`kdetect.paths.check_free` first).
    """
    import keras

    if input_type not in INPUT_TYPES:
        raise ExportError(
            f"--input-type: expected one of {', '.join(INPUT_TYPES)}, got {input_type!r}"
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
    archive.add_endpoint(_SINGLE_IMAGE, function)
    archive.write_out(str(output), verbose=False)
    return Path(output)


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
        if format == "tflite":
            try:
                from ai_edge_litert.interpreter import Interpreter
            except ImportError as exc:
                raise ExportError(
                    f"tflite: needs LiteRT (pip install ai-edge-litert): {exc}"
                ) from None
            source = (
                {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
            )
            threads = num_threads or os.cpu_count() or 1
            interpreter = Interpreter(**source, num_threads=threads)
            self._run = interpreter.get_signature_runner(_SINGLE_IMAGE)
            self._quiet_first_call = True
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if num_threads:
                options.intra_op_num_threads = num_threads
            session = onnxruntime.InferenceSession(
                model if isinstance(model, bytes) else str(model),
                options,
                providers=["CPUExecutionProvider"],
            )
            names = [o.name for o in session.get_outputs()]
            input_name = session.get_inputs()[0].name

            def run(images):
                values = session.run(names, {input_name: images})
                return dict(zip(names, values, strict=True))

            self._run = run

    def __call__(self, image) -> dict:
        import numpy as np

        image = np.asarray(image, dtype=np.uint8)
        images = image[None] if image.ndim == 3 else image
        if getattr(self, "_quiet_first_call", False):  # LiteRT logs its delegate once, here
            self._quiet_first_call = False
            with native_stderr_silenced():
                return dict(self._run(images=images))
        return dict(self._run(images=images))

    def predict(self, images, verbose=None) -> dict:
        """Detections of each image of ``images`` (uint8 ``[B, H, W, 3]``), one call each."""
        import numpy as np

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
        boxes, scores, labels, counts = zip(*rows, strict=True)
        return {
            "boxes": np.stack(boxes).astype(np.float32),
            "confidence": np.stack(scores),
            "labels": np.stack(labels),
            "num_detections": np.asarray(counts, np.int32),
        }


# --- TFLite ----------------------------------------------------------------------------------
_UNSUPPORTED_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
_PROBE_SIZE = (64, 64)


def convert_tflite(
    saved_model: str | os.PathLike, output: str | os.PathLike, quantize: str | None = None
) -> Path:
    """Convert the ``image_tensor`` signature of :func:`save_single_image_model`'s SavedModel to
    a ``.tflite`` file of TFLite builtin ops.

    ``quantize``: ``float16`` (weights stored as float16, computed in float32) or ``dynamic``
    (weights int8, activations quantised on the fly by the kernels that support it). The file is
    run once by LiteRT on a blank image (when ``ai-edge-litert`` is installed); when it cannot
    run, nothing is written and :class:`ExportError` gives the runtime's reason.
    """
    import numpy as np
    import tensorflow as tf

    check_options("tflite", quantize)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model), signature_keys=[_SINGLE_IMAGE]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        with native_stderr_silenced():
            flat = converter.convert()
    except Exception as exc:  # ConverterError and friends: report the ops, not the MLIR dump
        message = str(exc)
        missing = sorted(set(_UNSUPPORTED_OP.findall(message)))
        if missing:
            raise ExportError(
                "tflite: the TFLite builtin op set has no kernel for "
                + ", ".join(f"tf.{op}" for op in missing)
            ) from None
        first = next((line for line in message.splitlines() if "error" in line.lower()), message)
        raise ExportError(f"tflite: conversion failed ({first.strip()[:300]})") from None
    try:
        ExportedModel(flat, "tflite")(np.zeros((1, *_PROBE_SIZE, 3), np.uint8))
    except ExportError:  # LiteRT is not installed: converted, not run
        pass
    except (RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:400]
        raise ExportError(
            f"tflite: converted, but the LiteRT interpreter cannot run it: {reason}"
        ) from None
    with atomic_path(output) as tmp:
        tmp.write_bytes(flat)
    return Path(output)


# --- ONNX ------------------------------------------------------------------------------------
class _LogCollector:
    """Collects tf2onnx's per-node conversion errors (it logs them, then raises a summary) and
    keeps them, with the rest of its logging, off the console."""

    _NODE = re.compile(r"Failed to convert node '([^']+)' \(fct=<bound method (\w+)\.")

    def __init__(self):
        import logging

        self.failed: list[tuple[str, str]] = []
        collector = self

        class Handler(logging.Handler):
            def emit(self, record):
                match = collector._NODE.search(record.getMessage())
                if match:
                    collector.failed.append((match.group(2), match.group(1)))

        self.handler = Handler(level=logging.ERROR)
        self.logger = logging.getLogger("tf2onnx")

    def __enter__(self):
        # Only the collector hears tf2onnx while it converts: its own handlers and the root's
        # (which would print each node's traceback) are detached, so one clean line remains.
        self.saved = self.logger.handlers[:], self.logger.propagate
        self.logger.handlers = [self.handler]
        self.logger.propagate = False
        return self

    def __exit__(self, *exc):
        self.logger.handlers, self.logger.propagate = self.saved


def convert_onnx(
    saved_model: str | os.PathLike,
    output: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    classes: Sequence[str] | None = None,
) -> Path:
    """Convert the ``image_tensor`` signature of :func:`save_single_image_model`'s SavedModel to
    ONNX with tf2onnx; ``classes`` go into the file's metadata (``classes``, a JSON list).

    The file is run once with onnxruntime (when installed) before it is kept.
    """
    try:
        from tf2onnx import tf_loader
        from tf2onnx.convert import _convert_common
    except ImportError as exc:
        raise ExportError(f"onnx: needs tf2onnx (pip install tf2onnx onnx): {exc}") from None
    import numpy as np
    import tensorflow as tf

    with atomic_path(output) as tmp:
        with _LogCollector() as log:
            try:
                graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
                    str(saved_model),
                    None,
                    None,
                    tag="serve",
                    signatures=[_SINGLE_IMAGE],
                    return_initialized_tables=True,
                    return_tensors_to_rename=True,
                )
                with tf.device("/cpu:0"):
                    proto, _ = _convert_common(
                        graph_def,
                        name="kdetect",
                        opset=opset,
                        input_names=inputs,
                        output_names=outputs,
                        initialized_tables=tables,
                        tensors_to_rename=renames,
                    )
            except Exception as exc:
                text = str(exc).strip()
                reason = text.splitlines()[0] if text else type(exc).__name__
                reason = reason.removeprefix("make_sure failure: ")[:300]
                if log.failed:
                    ops = sorted({op for op, _ in log.failed})
                    node = log.failed[0][1]
                    raise ExportError(
                        f"onnx: tf2onnx (opset {opset}) cannot convert {', '.join(ops)} "
                        f"(node {node}): {reason}"
                    ) from None
                raise ExportError(f"onnx: tf2onnx cannot convert this model ({reason})") from None
        if classes is not None:
            proto.metadata_props.add(key="classes", value=json.dumps(list(classes)))
        tmp.write_bytes(proto.SerializeToString())
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            onnxruntime = None
        if onnxruntime is not None:
            try:
                ExportedModel(tmp)(np.zeros((1, *_PROBE_SIZE, 3), np.uint8))
            except Exception as exc:
                reason = " ".join(str(exc).split())[:400]
                raise ExportError(
                    f"onnx: converted, but onnxruntime cannot run it: {reason}"
                ) from None
    return Path(output)


# --- Entry points ----------------------------------------------------------------------------
def is_saved_model(path: str | os.PathLike) -> bool:
    return (Path(path) / "saved_model.pb").is_file()


def check_options(format: str, quantize: str | None) -> None:
    """A clear error for a format or quantisation kdetect does not offer."""
    if format not in FORMATS:
        raise ExportError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if quantize is not None and format != "tflite":
        raise ExportError(f"--quantize applies to --format tflite only (got --format {format})")
    if quantize not in (None, *QUANTIZATIONS):
        raise ExportError(
            f"--quantize: expected one of {', '.join(QUANTIZATIONS)}, got {quantize!r}"
        )


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
    ``model_path``.
    """
    from kdetect.runs import load_model

    check_options(format, quantize)
    output = Path(output)
    check_not_input(output, [model_path], replaces=True)
    check_kind(output, "folder" if format == "saved_model" else "file")
    check_free(output, overwrite)
    if is_saved_model(model_path):
        raise ExportError(
            f"{model_path}: a SavedModel; export from the run directory, .keras or .kdet file "
            "it came from (ONNX and TFLite are traced from the Keras model)"
        )
    model, classes = load_model(model_path)
    return export_model(model, output, format, classes, input_type, quantize, opset)
