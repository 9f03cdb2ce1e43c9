"""ONNX and TFLite files from a detector's single-image SavedModel, and the runtimes that run them.

Both converters start from the ``image_tensor`` signature of
:func:`kdetect.models.export_formats.save_single_image_model` (uint8 ``[1, H, W, 3]``, traced
with the model's portable ops): tf2onnx for ONNX, TensorFlow's TFLite converter with builtin ops
only for TFLite. Each file is run once in its own runtime (onnxruntime, LiteRT) on a blank image
before it is kept. When a converter or a runtime cannot handle an op, :class:`ExportError` names
it in one line.

TensorFlow, tf2onnx, onnxruntime and LiteRT are imported inside the functions: the last three are
optional, and running an exported file (:func:`open_runtime`) needs no TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kdetect.plumbing.errors import ExportError
from kdetect.plumbing.native_logs import native_stderr_silenced
from kdetect.plumbing.paths import atomic_path

QUANTIZATIONS = ("float16", "dynamic")
DEFAULT_OPSET = 17
#: The one signature of the single-image SavedModel, and of the ONNX and TFLite files.
SINGLE_IMAGE = "image_tensor"
_UNSUPPORTED_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
_PROBE_SIZE = (64, 64)


def check_quantization(quantize: str | None) -> None:
    """A clear error for a quantisation kdetect does not offer."""
    if quantize not in (None, *QUANTIZATIONS):
        raise ExportError(f"quantize: expected one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")


# --- Runtimes --------------------------------------------------------------------------------
def open_runtime(
    model: str | os.PathLike | bytes, format: str, num_threads: int | None = None
) -> Callable[[np.ndarray], dict]:
    """Load a ``.tflite`` or ``.onnx`` file (a path, or its bytes) once; returns a function of
    uint8 ``[1, H, W, 3]`` images giving the file's outputs by name.

    TFLite runs in the LiteRT interpreter (its default XNNPACK delegate, ``num_threads`` threads,
    default every CPU), ONNX in onnxruntime on the CPU (``num_threads`` intra-op threads).
    """
    if format == "tflite":
        return _litert_runner(model, num_threads)
    return _onnxruntime_runner(model, num_threads)


def _litert_runner(model, num_threads: int | None) -> Callable[[np.ndarray], dict]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ExportError(f"tflite: needs LiteRT (pip install ai-edge-litert): {exc}") from None
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    interpreter = Interpreter(**source, num_threads=num_threads or os.cpu_count() or 1)
    signature = interpreter.get_signature_runner(SINGLE_IMAGE)
    first_call = [True]

    def run(images: np.ndarray) -> dict:
        if first_call:  # LiteRT logs its delegate once, here
            first_call.clear()
            with native_stderr_silenced():
                return dict(signature(images=images))
        return dict(signature(images=images))

    return run


def _onnxruntime_runner(model, num_threads: int | None) -> Callable[[np.ndarray], dict]:
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

    def run(images: np.ndarray) -> dict:
        values = session.run(names, {input_name: images})
        return dict(zip(names, values, strict=True))

    return run


def _blank_image() -> np.ndarray:
    return np.zeros((1, *_PROBE_SIZE, 3), np.uint8)


# --- TFLite ----------------------------------------------------------------------------------
def convert_tflite(
    saved_model: str | os.PathLike, output: str | os.PathLike, quantize: str | None = None
) -> Path:
    """Convert the ``image_tensor`` signature of the single-image SavedModel to a ``.tflite``
    file of TFLite builtin ops.

    ``quantize``: ``float16`` (weights stored as float16, computed in float32) or ``dynamic``
    (weights int8, activations quantised on the fly by the kernels that support it). The file is
    run once by LiteRT on a blank image (when ``ai-edge-litert`` is installed); when it cannot
    run, nothing is written and :class:`ExportError` gives the runtime's reason.
    """
    import tensorflow as tf

    check_quantization(quantize)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model), signature_keys=[SINGLE_IMAGE]
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
        open_runtime(flat, "tflite")(_blank_image())
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
    """Convert the ``image_tensor`` signature of the single-image SavedModel to ONNX with
    tf2onnx; ``classes`` go into the file's metadata (``classes``, a JSON list).

    The file is run once with onnxruntime (when installed) before it is kept.
    """
    try:
        from tf2onnx import tf_loader
        from tf2onnx.convert import _convert_common
    except ImportError as exc:
        raise ExportError(f"onnx: needs tf2onnx (pip install tf2onnx onnx): {exc}") from None
    import tensorflow as tf

    with atomic_path(output) as tmp:
        with _LogCollector() as log:
            try:
                graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
                    str(saved_model),
                    None,
                    None,
                    tag="serve",
                    signatures=[SINGLE_IMAGE],
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
                raise _onnx_conversion_error(exc, log.failed, opset) from None
        if classes is not None:
            proto.metadata_props.add(key="classes", value=json.dumps(list(classes)))
        tmp.write_bytes(proto.SerializeToString())
        _check_onnx_runs(tmp)
    return Path(output)


def _onnx_conversion_error(exc: Exception, failed: list[tuple[str, str]], opset: int):
    """One line for a failed tf2onnx conversion: the ops (and first node) it could not convert,
    else its own reason."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    reason = reason.removeprefix("make_sure failure: ")[:300]
    if failed:
        ops = sorted({op for op, _ in failed})
        return ExportError(
            f"onnx: tf2onnx (opset {opset}) cannot convert {', '.join(ops)} "
            f"(node {failed[0][1]}): {reason}"
        )
    return ExportError(f"onnx: tf2onnx cannot convert this model ({reason})")


def _check_onnx_runs(path: Path) -> None:
    """Run the ONNX file once on a blank image with onnxruntime (skipped when not installed)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return
    try:
        open_runtime(path, "onnx")(_blank_image())
    except Exception as exc:
        reason = " ".join(str(exc).split())[:400]
        raise ExportError(f"onnx: converted, but onnxruntime cannot run it: {reason}") from None
