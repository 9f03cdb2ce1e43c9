"""``kdetect export``: the SavedModel's TF OD API signatures match ``model.predict``; TFLite and
ONNX conversions either run and match, or exit 1 naming the op that stops them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_cli_train_support import kdetect
from test_serve_support import encode, loaded_model, sample_image

from kdetect.export import OUTPUT_NAMES, label_map_pbtxt


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run, _, _ = loaded_model(tmp_path_factory)
    out = tmp_path_factory.mktemp("export") / "saved_model"
    assert kdetect("export", run, "--format", "saved_model", "--output", out) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    run, _, _ = loaded_model(tmp_path_factory)
    rng = np.random.default_rng(0)
    return [sample_image(run), rng.integers(0, 255, (40, 90, 3), np.uint8)]


def _to_pixels_xyxy(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """TF OD API normalised [ymin, xmin, ymax, xmax] -> kdetect xyxy pixels."""
    return boxes[..., [1, 0, 3, 2]] * np.array([width, height, width, height], np.float32)


def _check_against_model(out: dict, reference: dict, k: int, height: int, width: int) -> None:
    count = int(reference["num_detections"][k])
    assert int(out["num_detections"]) == count
    np.testing.assert_allclose(
        _to_pixels_xyxy(np.asarray(out["detection_boxes"]), height, width),
        reference["boxes"][k],
        atol=1e-3,
    )
    np.testing.assert_allclose(out["detection_scores"], reference["confidence"][k], atol=1e-5)
    labels = reference["labels"][k]
    np.testing.assert_array_equal(out["detection_classes"], np.where(labels >= 0, labels + 1, 0))


def test_saved_model_signatures_match_predict(exported, images, tmp_path_factory):
    import tensorflow as tf

    _, model, classes = loaded_model(tmp_path_factory)
    loaded = tf.saved_model.load(str(exported))
    assert {"serving_default", "encoded_image_string_tensor", "image_tensor"} <= set(
        loaded.signatures
    )
    # Encoded bytes of different sizes in one batch (serving_default).
    encoded = loaded.signatures["serving_default"](
        images=tf.constant([encode(image) for image in images])
    )
    assert set(OUTPUT_NAMES) <= set(encoded)
    for k, image in enumerate(images):
        reference = model.predict(image[None], verbose=0)
        one = {name: encoded[name].numpy()[k] for name in OUTPUT_NAMES}
        _check_against_model(one, reference, 0, *image.shape[:2])
        assert one["detection_boxes"].min() >= 0 and one["detection_boxes"].max() <= 1
    # A uint8 batch of one size (image_tensor).
    batch = np.stack([images[0], images[0][::-1]])
    reference = model.predict(batch, verbose=0)
    out = loaded.signatures["image_tensor"](images=tf.constant(batch))
    for k in range(2):
        one = {name: out[name].numpy()[k] for name in OUTPUT_NAMES}
        _check_against_model(one, reference, k, 64, 64)
    extra = exported / "assets.extra"
    assert json.loads((extra / "classes.json").read_text())["classes"] == classes
    assert (extra / "label_map.pbtxt").read_text() == label_map_pbtxt(classes)
    assert 'id: 1\n  name: "circle"' in label_map_pbtxt(classes)


def _export_error(capsys, *args) -> str:
    assert kdetect("export", *args) == 1
    err = capsys.readouterr().err
    assert "error:" in err
    return " ".join(err.split())


def test_tflite_names_the_op_it_cannot_convert(exported, tmp_path, capsys):
    target = tmp_path / "m.tflite"
    err = _export_error(capsys, exported, "--format", "tflite", "--output", target)
    assert "tf.CombinedNonMaxSuppression" in err and "--select-tf-ops" in err
    assert not target.exists()


def test_tflite_with_select_tf_ops_runs_or_says_why(
    exported, images, tmp_path, capsys, tmp_path_factory
):
    from kdetect.export import run_tflite

    target = tmp_path / "m.tflite"
    code = kdetect("export", exported, "--format", "tflite", "--select-tf-ops", "--output", target)
    if code == 0:  # a TFLite runtime that can run the Flex model: it must match the model
        _, model, _ = loaded_model(tmp_path_factory)
        out = run_tflite(target, images[0][None])
        reference = model.predict(images[0][None], verbose=0)
        _check_against_model({k: v[0] for k, v in out.items()}, reference, 0, 64, 64)
        return
    err = " ".join(capsys.readouterr().err.split())
    assert "TFLite runtime cannot run it" in err
    assert not target.exists()


def test_onnx_converts_and_matches_or_names_the_op(
    exported, images, tmp_path, capsys, tmp_path_factory
):
    pytest.importorskip("tf2onnx")
    target = tmp_path / "m.onnx"
    code = kdetect("export", exported, "--format", "onnx", "--output", target)
    if code == 0:
        onnxruntime = pytest.importorskip("onnxruntime")  # noqa: F841
        from kdetect.export import run_onnx

        _, model, _ = loaded_model(tmp_path_factory)
        out = run_onnx(target, images[0][None])
        reference = model.predict(images[0][None], verbose=0)
        _check_against_model({k: v[0] for k, v in out.items()}, reference, 0, 64, 64)
        return
    err = " ".join(capsys.readouterr().err.split())
    assert "onnx: tf2onnx" in err and "CombinedNonMaxSuppression" in err
    assert not target.exists()


def test_onnx_failure_is_one_clean_line_in_a_subprocess(exported, tmp_path):
    """tf2onnx logs each node's traceback itself: none of it reaches the console."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("tf2onnx")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KDETECT_DEBUG", None)
    target = tmp_path / "m.onnx"
    args = [
        sys.executable,
        "-m",
        "kdetect",
        "export",
        str(exported),
        "-f",
        "onnx",
        "-o",
        str(target),
    ]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode == 0:
        pytest.skip("this tf2onnx converts the model")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "ERROR:tf2onnx" not in done.stderr, done.stderr
    # TensorFlow's C++ start-up logging (absl) is not ours; everything else is the one line
    native = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")
    lines = [line for line in done.stderr.splitlines() if line.strip() and not native.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: onnx: tf2onnx"), done.stderr
    assert not target.exists()


def test_export_bad_arguments(exported, tmp_path, capsys):
    err = _export_error(capsys, exported, "--format", "pb", "--output", tmp_path / "x")
    assert "--format" in err
    err = _export_error(capsys, exported, "--format", "saved_model", "--output", tmp_path / "y")
    assert "already a SavedModel" in err
    err = _export_error(capsys, tmp_path / "missing", "--output", tmp_path / "z")
    assert "missing" in err
