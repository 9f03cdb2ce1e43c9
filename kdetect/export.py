"""Export a trained detector for serving: SavedModel (TF Serving), TFLite and ONNX.

The SavedModel follows the TensorFlow Object Detection API's exported-model contract, so existing
TF Serving clients work unchanged. It has two signatures:

``encoded_image_string_tensor``
    input ``images``: ``tf.string [B]``, encoded JPEG/PNG/GIF/BMP bytes (images may differ in
    size; each is run on its own).
``image_tensor``
    input ``images``: ``tf.uint8 [B, H, W, 3]`` RGB (one size per batch).

``serving_default`` is one of the two (``input_type``, encoded bytes by default). Both return

==================  =================  ====================================================
``detection_boxes``   float32 [B, N, 4]  ``[ymin, xmin, ymax, xmax]`` normalised to [0, 1] by
                                         the input image's height and width
``detection_scores``  float32 [B, N]     sorted descending; 0 on padding rows
``detection_classes`` float32 [B, N]     1-based class id (kdetect ``label_id + 1``), 0 on
                                         padding rows (the TF OD API's label-map convention)
``num_detections``    float32 [B]        rows of real detections
==================  =================  ====================================================

``N`` is the model's ``box_detections_per_img``. ``assets.extra/`` holds ``classes.json`` and a
TF OD API ``label_map.pbtxt`` (ids 1..C). Encoded images are decoded by TensorFlow, which does not
apply EXIF orientation (decode and rotate on the client if that matters).

TFLite and ONNX are converted from the ``image_tensor`` signature with the standard converters
(``tf.lite.TFLiteConverter.from_saved_model`` and ``tf2onnx``). When a converter cannot handle an
op, :class:`ExportError` names the ops and the reason.
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
from kdetect.paths import atomic_path, check_free, check_kind, check_not_input

FORMATS = ("saved_model", "tflite", "onnx")
INPUT_TYPES = ("encoded_image_string_tensor", "image_tensor")
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
DEFAULT_OPSET = 17


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


def serving_functions(model) -> dict[str, Any]:
    """The two serving ``tf.function``s (see the module docstring), keyed by input type."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def image_tensor(images):
        shape = tf.shape(images)
        return _od_outputs(model.predict_step(images), shape[1], shape[2])

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
    if classes is None:
        classes = [f"class_{i}" for i in range(int(getattr(model, "num_classes", 0)))]
    with atomic_path(output) as tmp:
        archive.write_out(str(tmp), verbose=False)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        (extra / "classes.json").write_text(json.dumps({"classes": list(classes)}, indent=2) + "\n")
        (extra / "label_map.pbtxt").write_text(label_map_pbtxt(classes))
    return output


_UNSUPPORTED_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
_FLEX_OP = re.compile(r"Flex ops?: ([\w, ]+)")
_PROBE_SIZE = (64, 64)


def _tflite_unsupported_ops(message: str) -> list[str]:
    ops = set(_UNSUPPORTED_OP.findall(message))
    for group in _FLEX_OP.findall(message):
        ops.update(name.strip().removeprefix("Flex") for name in group.split(","))
    return sorted(op for op in ops if op)


def run_tflite(model: str | os.PathLike | bytes, images) -> dict:
    """Run a ``.tflite`` detector (``image_tensor`` signature) on uint8 ``[B, H, W, 3]`` images."""
    import numpy as np
    import tensorflow as tf

    kwargs = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    interpreter = tf.lite.Interpreter(**kwargs)
    runner = interpreter.get_signature_runner("image_tensor")
    return runner(images=np.asarray(images, dtype=np.uint8))


def convert_tflite(
    saved_model: str | os.PathLike, output: str | os.PathLike, select_tf_ops: bool = False
) -> Path:
    """Convert the ``image_tensor`` signature of an exported SavedModel to a ``.tflite`` file.

    With ``select_tf_ops`` the ops that TFLite lacks are embedded as TensorFlow ops (the file then
    needs an interpreter built with the Flex delegate, as TensorFlow's own ``tf.lite.Interpreter``
    is). Without it, a model that needs such ops raises :class:`ExportError` naming them. The
    converted file is run once on a blank image; when the TFLite runtime cannot run it, nothing is
    written and :class:`ExportError` gives the runtime's reason.
    """
    import numpy as np
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model), signature_keys=["image_tensor"]
    )
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    try:
        flat = converter.convert()
    except Exception as exc:  # ConverterError and friends: report the ops, not the MLIR dump
        message = str(exc)
        missing = _tflite_unsupported_ops(message)
        if missing and not select_tf_ops:
            raise ExportError(
                "tflite: the TFLite builtin op set has no kernel for "
                + ", ".join(f"tf.{op}" for op in missing)
                + " (the detector's final per-class NMS); rerun with --select-tf-ops to embed"
                " it as a TensorFlow (Flex) op"
            ) from None
        first = next((line for line in message.splitlines() if "error" in line.lower()), message)
        raise ExportError(f"tflite: conversion failed ({first.strip()[:300]})") from None
    try:
        run_tflite(flat, np.zeros((1, *_PROBE_SIZE, 3), np.uint8))
    except (RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:400]
        raise ExportError(
            "tflite: the model converts (with TensorFlow ops) but the TFLite runtime cannot run "
            f"it: {reason} (a WHILE node is a tf.map_fn / NMS loop of the detector; its body "
            "does not prepare in TFLite)"
        ) from None
    with atomic_path(output) as tmp:
        tmp.write_bytes(flat)
    return Path(output)


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


def run_onnx(path: str | os.PathLike, images) -> dict:
    """Run an ONNX detector with onnxruntime on uint8 ``[B, H, W, 3]`` images."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {name: np.asarray(images, dtype=np.uint8)})
    return {n.split(":")[0]: v for n, v in zip(names, values, strict=True)}


def convert_onnx(
    saved_model: str | os.PathLike, output: str | os.PathLike, opset: int = DEFAULT_OPSET
) -> Path:
    """Convert the ``image_tensor`` signature of an exported SavedModel to ONNX with tf2onnx.

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
                    signatures=["image_tensor"],
                    return_initialized_tables=True,
                    return_tensors_to_rename=True,
                )
                with tf.device("/cpu:0"):
                    _convert_common(
                        graph_def,
                        name="kdetect",
                        opset=opset,
                        input_names=inputs,
                        output_names=outputs,
                        initialized_tables=tables,
                        tensors_to_rename=renames,
                        output_path=str(tmp),
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
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            onnxruntime = None
        if onnxruntime is not None:
            try:
                run_onnx(tmp, np.zeros((1, *_PROBE_SIZE, 3), np.uint8))
            except Exception as exc:
                reason = " ".join(str(exc).split())[:400]
                raise ExportError(
                    f"onnx: converted, but onnxruntime cannot run it: {reason}"
                ) from None
    return Path(output)


def is_saved_model(path: str | os.PathLike) -> bool:
    return (Path(path) / "saved_model.pb").is_file()


def export(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    format: str = "saved_model",
    input_type: str = "encoded_image_string_tensor",
    select_tf_ops: bool = False,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Export the detector of a run directory, ``.keras`` or ``.kdet`` file; returns the output.

    ``model_path`` may also be a SavedModel written by this function, for ``tflite`` / ``onnx``.

    ``format="saved_model"`` writes a SavedModel folder; ``"tflite"`` / ``"onnx"`` write one file
    (through a temporary SavedModel). An existing file or non-empty folder at ``output`` is
    replaced only with ``overwrite``, and only once the new export is complete; ``output`` may
    never be (or hold) ``model_path``.
    """
    from kdetect.recipes.runs import load_model

    if format not in FORMATS:
        raise ExportError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}")
    output = Path(output)
    check_not_input(output, [model_path], replaces=True)
    check_kind(output, "folder" if format == "saved_model" else "file")
    check_free(output, overwrite)
    if is_saved_model(model_path):
        # A SavedModel written by kdetect export: convert it without loading Keras again.
        if format == "saved_model":
            raise ExportError(f"{model_path}: already a SavedModel; use --format tflite or onnx")
        if format == "tflite":
            return convert_tflite(model_path, output, select_tf_ops=select_tf_ops)
        return convert_onnx(model_path, output, opset=opset)
    model, classes = load_model(model_path)
    if format == "saved_model":
        return save_serving_model(model, output, classes, input_type)
    with tempfile.TemporaryDirectory(prefix="kdetect-export-") as tmp:
        saved = save_serving_model(model, Path(tmp) / "saved_model", classes, "image_tensor")
        if format == "tflite":
            return convert_tflite(saved, output, select_tf_ops=select_tf_ops)
        return convert_onnx(saved, output, opset=opset)
