"""``kdetect export``: each exported file runs in its own runtime (TF SavedModel, onnxruntime,
LiteRT) and gives ``predict``'s detections on real photos of several sizes; quantised TFLite files
keep the shapes validation mAP; Keras' ``model.export`` and ``keras.saving.load_model`` work; a
conversion that fails says which op in one line and writes nothing."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdetect.apps.export import OUTPUT_NAMES, ExportedModel, ExportError, label_map_pbtxt
from tests.helpers import perturbed_detections, tie_decided
from tests.pretrained_support import RACCOON, checkpoint
from tests.serve_support import encode, loaded_model, sample_image
from tests.train_support import BCCD, kdetect, trained_shapes_run

ROOT = Path(__file__).resolve().parents[2]
# The claim of docs/deploy.md: an exported file's detections equal predict's to this much.
BOX_TOL = 0.5  # pixels
SCORE_TOL = 1e-3
RUNTIMES = ("onnx", "tflite")
# Detections that a float-rounding tie decides differently in two runtimes (imported model only).
MAX_TIE_SHARE = 0.03


# --- Helpers ---------------------------------------------------------------------------------
def _to_pixels_xyxy(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """TF OD API normalised [ymin, xmin, ymax, xmax] -> kdetect xyxy pixels."""
    return boxes[..., [1, 0, 3, 2]] * np.array([width, height, width, height], np.float32)


def _detections(out: dict, k: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, labels) of image ``k`` of a kdetect predict-style output."""
    count = int(out["num_detections"][k])
    return (
        np.asarray(out["boxes"][k][:count]),
        np.asarray(out["confidence"][k][:count]),
        np.asarray(out["labels"][k][:count]),
    )


def assert_same_detections(ours: dict, reference: dict, k: int = 0, noisy=None) -> int:
    """Same number of detections, and each one paired one-to-one with a reference detection of
    the same label, box within BOX_TOL pixels and score within SCORE_TOL (pairing, not row
    order, so two scores equal to float rounding may come in either order). ``noisy``: a function
    giving the reference model's detections on noisy copies of the image (``tests/helpers.py``); a
    detection left unpaired is then allowed when the reference model itself gains or loses it
    there (a tie that float rounding decides), at most MAX_TIE_SHARE of them. Returns the count."""
    boxes, scores, labels = _detections(ours, k)
    ref_boxes, ref_scores, ref_labels = _detections(reference, k)
    assert len(scores) == len(ref_scores)
    free = np.ones(len(ref_scores), bool)
    box_diff = score_diff = 0.0
    unpaired = []
    for box, score, label in zip(boxes, scores, labels, strict=True):
        close = (
            free
            & (ref_labels == label)
            & (np.abs(ref_scores - score) <= SCORE_TOL)
            & np.all(np.abs(ref_boxes - box) <= BOX_TOL, axis=-1)
        )
        if not close.any():
            unpaired.append((box, score, label))
            continue
        pair = np.flatnonzero(close)[0]
        free[pair] = False
        box_diff = max(box_diff, float(np.abs(ref_boxes[pair] - box).max()))
        score_diff = max(score_diff, float(abs(ref_scores[pair] - score)))
    print(f"{len(scores)} detections, largest box diff {box_diff:.2e} px, score {score_diff:.2e}")
    if unpaired and noisy is not None:
        lost = [(ref_boxes[i], ref_scores[i], ref_labels[i]) for i in np.flatnonzero(free)]
        print(f"  unpaired: {len(unpaired)} exported, {len(lost)} predict; checking for ties")
        noisy = noisy()
        assert len(unpaired) <= MAX_TIE_SHARE * len(scores)
        assert all(tie_decided(True, d, noisy, BOX_TOL, SCORE_TOL) for d in lost)
        unpaired = [d for d in unpaired if not tie_decided(False, d, noisy, BOX_TOL, SCORE_TOL)]
    for box, score, label in unpaired:
        raise AssertionError(f"no predict detection matches label {label} {score:.4f} {box}")
    return len(scores)


def _photos() -> list[np.ndarray]:
    """Real photos of different sizes and aspect ratios from ../shared/data."""
    paths = [RACCOON / "raccoon-102.jpg", RACCOON / "raccoon-104.jpg", RACCOON / "raccoon-103.jpg"]
    paths += sorted((BCCD / "JPEGImages").glob("*.jpg"))[:1]
    if not all(path.is_file() for path in paths):
        pytest.skip("../shared/data photos not available")
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def _export_error(capsys, *args) -> str:
    assert kdetect("export", *args) == 1
    err = capsys.readouterr().err
    assert "error:" in err
    return " ".join(err.split())


# --- SavedModel ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run, _, _ = loaded_model(tmp_path_factory)
    out = tmp_path_factory.mktemp("export") / "saved_model"
    assert kdetect("export", run, "--format", "saved_model", "--output", out) == 0
    return out


def _check_od_against_model(out: dict, reference: dict, k: int, height: int, width: int):
    """One image's TF OD API outputs against row ``k`` of ``model.predict``."""
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


def test_saved_model_signatures_match_predict(exported, tmp_path_factory):
    import tensorflow as tf

    run, model, classes = loaded_model(tmp_path_factory)
    images = [sample_image(run), np.random.default_rng(0).integers(0, 255, (40, 90, 3), np.uint8)]
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
        _check_od_against_model(one, reference, 0, *image.shape[:2])
        assert one["detection_boxes"].min() >= 0 and one["detection_boxes"].max() <= 1
    # A uint8 batch of one size (image_tensor), and Keras' ``serve`` endpoint.
    batch = np.stack([images[0], images[0][::-1]])
    reference = model.predict(batch, verbose=0)
    for out in (loaded.signatures["image_tensor"](images=tf.constant(batch)), loaded.serve(batch)):
        for k in range(2):
            one = {name: np.asarray(out[name])[k] for name in OUTPUT_NAMES}
            _check_od_against_model(one, reference, k, 64, 64)
    extra = exported / "assets.extra"
    assert json.loads((extra / "classes.json").read_text())["classes"] == classes
    assert (extra / "label_map.pbtxt").read_text() == label_map_pbtxt(classes)
    assert 'id: 1\n  name: "circle"' in label_map_pbtxt(classes)


# --- ONNX and TFLite of a trained run (resize_mode fit) --------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run directory, model, classes) of the trained shapes run."""
    from kdetect.runs import load_model

    run = trained_shapes_run(tmp_path_factory)
    return (run, *load_model(run))


@pytest.fixture(scope="module", params=RUNTIMES)
def trained_file(request, trained, tmp_path_factory):
    """The trained run exported by the CLI as ONNX or TFLite."""
    target = tmp_path_factory.mktemp("exported") / f"shapes.{request.param}"
    assert kdetect("export", trained[0], "--format", request.param, "--output", target) == 0
    return target


def test_exported_file_matches_predict_on_photos(trained, trained_file):
    """Shapes validation images and real photos (259x194, 600x304, 480x640, 640x480)."""
    from kdetect.engine.builders import run_ground_truth

    _, model, _ = trained
    records = run_ground_truth(trained[0], None).records[:3]
    images = [np.asarray(r.image) for r in records] + _photos()
    exported = ExportedModel(trained_file)
    counts = []
    for image in images:
        reference = model.predict_on_batch(image[None])
        counts.append(assert_same_detections(exported.predict(image[None]), reference))
    assert sum(counts[:3]) >= 3  # the trained model finds the shapes
    if trained_file.suffix == ".onnx":  # the class names travel in the file's metadata
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(trained_file)).metadata_props}
        assert json.loads(meta["classes"]) == trained[2]


# --- An imported torchvision checkpoint (resize_mode min_max) --------------------------------
@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from kdetect.models.faster_rcnn import FasterRCNN

    arch = "fasterrcnn_mobilenet_v3_large_fpn"
    weights, images, _ = checkpoint(tmp_path_factory, arch)
    return FasterRCNN.from_torchvision(weights, arch=arch), images


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_imported_checkpoint_exports_match_predict(imported, runtime, tmp_path):
    """torchvision's transform in the graph: photos from 259x194 (resized to 799 px, float64's
    rounding) to 1440x1920 (past max_size)."""
    from kdetect.apps.export import export_model

    model, images = imported
    path = export_model(model, tmp_path / f"mobilenet.{runtime}", runtime)
    exported = ExportedModel(path)

    def predict(pixels):
        return _detections(model.predict_on_batch(pixels[None]))

    for image in images:
        reference = model.predict_on_batch(image[None])
        found = exported.predict(image[None])
        noisy = functools.partial(perturbed_detections, predict, image)
        assert assert_same_detections(found, reference, noisy=noisy) > 0


# --- Quantised TFLite --------------------------------------------------------------------------
# mAP (VOC07, shapes validation set) that quantisation may cost; docs/deploy.md has the numbers.
QUANTIZED_MAP_DROP = {"float16": 0.01, "dynamic": 0.05}


def test_quantized_tflite_keeps_the_validation_map(trained, tmp_path):
    from kdetect.engine.builders import run_ground_truth
    from kdetect.evaluation.api import evaluate_model
    from kdetect.evaluation.groundtruth import GroundTruth

    run, model, _ = trained
    gt = GroundTruth(run_ground_truth(run, None))
    keras_map = evaluate_model(model, gt, progress=False)["mAP"]
    sizes = {}
    for quantize in (None, *QUANTIZED_MAP_DROP):
        target = tmp_path / f"{quantize}.tflite"
        args = ["--quantize", quantize] if quantize else []
        assert kdetect("export", run, "-f", "tflite", "-o", target, *args) == 0
        sizes[quantize] = target.stat().st_size
        value = evaluate_model(ExportedModel(target), gt, progress=False)["mAP"]
        print(f"shapes voc07 mAP keras {keras_map:.4f} tflite[{quantize}] {value:.4f}")
        if quantize is None:
            assert value == pytest.approx(keras_map, abs=1e-3)
        else:
            assert value >= keras_map - QUANTIZED_MAP_DROP[quantize]
    assert sizes["float16"] < 0.6 * sizes[None] and sizes["dynamic"] < 0.4 * sizes[None]


# --- Keras' own API ------------------------------------------------------------------------
def test_keras_model_export_formats(tmp_path_factory, tmp_path):
    import tensorflow as tf

    run, model, classes = loaded_model(tmp_path_factory)
    image = sample_image(run)
    reference = model.predict_on_batch(image[None])
    # (format="onnx" goes through the same export_model as the CLI's ONNX tests)
    path = model.export(str(tmp_path / "m.tflite"), format="litert", classes=classes)
    assert_same_detections(ExportedModel(path).predict(image[None]), reference)
    model.export(str(tmp_path / "saved"), format="tf_saved_model")
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    served = loaded.serve(image[None])
    _check_od_against_model(
        {name: np.asarray(served[name])[0] for name in OUTPUT_NAMES}, reference, 0, 64, 64
    )
    with pytest.raises(ExportError, match="format"):
        model.export(str(tmp_path / "x"), format="openvino")
    with pytest.raises(ExportError, match="input_signature"):
        model.export(str(tmp_path / "x"), input_signature=[tf.TensorSpec([1, 64, 64, 3])])
    with pytest.raises(ExportError, match="unknown option"):
        model.export(str(tmp_path / "x"), format="onnx", bogus=1)


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )


def test_keras_loads_a_run_with_kdetects_custom_objects(tmp_path_factory):
    """Keras' own loader, given kdetect's classes the way Keras takes them (``custom_objects``),
    in a fresh interpreter; ``import kdetect`` alone stays light and patches nothing in Keras."""
    run, _, _ = loaded_model(tmp_path_factory)
    done = _python(
        "import sys, kdetect\n"
        "assert 'tensorflow' not in sys.modules, 'import kdetect must stay light'\n"
        "import keras\n"
        "from kdetect.models import custom_objects\n"
        f"path = {str(run / 'model.keras')!r}\n"
        "model = keras.saving.load_model(path, custom_objects=custom_objects())\n"
        "print(type(model).__name__, model.num_classes)\n"
        "with keras.saving.custom_object_scope(custom_objects()):\n"
        "    print(type(keras.saving.load_model(path)).__name__)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["FasterRCNN", "3", "FasterRCNN"]


# --- Failures ----------------------------------------------------------------------------------
def _saved_model_with(tmp_path, op) -> Path:
    """A SavedModel whose ``image_tensor`` signature runs ``op`` (an op a converter lacks)."""
    import tensorflow as tf

    module = tf.Module()
    module.f = tf.function(op, input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    path = tmp_path / "saved"
    tf.saved_model.save(module, str(path), signatures={"image_tensor": module.f})
    return path


def _crop(images):
    import tensorflow as tf

    boxes = tf.constant([[0.0, 0.0, 0.5, 0.5]])
    crops = tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, [0], [7, 7])
    return {"num_detections": tf.reduce_sum(crops, axis=[1, 2, 3])}


def _combined_nms(images):
    import tensorflow as tf

    boxes = tf.zeros([1, 10, 3, 4]) + tf.reduce_mean(tf.cast(images, tf.float32))
    out = tf.image.combined_non_max_suppression(boxes, tf.ones([1, 10, 3]), 5, 5)
    return {"num_detections": tf.cast(out.valid_detections, tf.float32)}


def test_tflite_conversion_failure_names_the_op(tmp_path):
    from kdetect.apps.export import convert_tflite

    target = tmp_path / "m.tflite"
    with pytest.raises(ExportError, match=r"tflite: .*tf\.CropAndResize"):
        convert_tflite(_saved_model_with(tmp_path, _crop), target)
    assert not target.exists() and list(tmp_path.iterdir()) == [tmp_path / "saved"]


def test_onnx_conversion_failure_names_the_op(tmp_path):
    from kdetect.apps.export import convert_onnx

    target = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"onnx: tf2onnx .*CombinedNonMaxSuppression"):
        convert_onnx(_saved_model_with(tmp_path, _combined_nms), target)
    assert not target.exists() and list(tmp_path.iterdir()) == [tmp_path / "saved"]


def test_cli_conversion_failure_is_one_line(tmp_path_factory, tmp_path):
    """ONNX opset 11 has no batched gather: the CLI says so in one line (tf2onnx's own per-node
    tracebacks and TensorFlow's start-up lines stay off the console), exits 1, writes nothing."""
    run, _, _ = loaded_model(tmp_path_factory)
    target = tmp_path / "m.onnx"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("KDETECT_DEBUG", "KDETECT_VERBOSE", "TF_CPP_MIN_LOG_LEVEL"):
        env.pop(key, None)
    args = [sys.executable, "-m", "kdetect", "export", str(run), "-f", "onnx", "--opset", "11"]
    done = subprocess.run(
        [*args, "-o", str(target)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "ERROR:tf2onnx" not in done.stderr, done.stderr
    # Nothing else: no TensorFlow start-up lines either (kdetect.plumbing.native_logs)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: onnx: tf2onnx (opset 11) cannot convert GatherV2")
    assert list(tmp_path.iterdir()) == []


def test_export_bad_arguments(exported, tmp_path_factory, tmp_path, capsys):
    run, _, _ = loaded_model(tmp_path_factory)
    # a format outside the choices is a usage error, as in every command
    assert kdetect("export", run, "--format", "pb", "--output", tmp_path / "x") == 2
    assert "--format" in capsys.readouterr().err
    err = _export_error(capsys, run, "-f", "onnx", "--quantize", "float16", "-o", tmp_path / "y")
    assert "--quantize: applies to the tflite format only (got onnx)" in err
    err = _export_error(capsys, run, "-f", "tflite", "--quantize", "int4", "-o", tmp_path / "z")
    assert "--quantize" in err and "int4" in err
    err = _export_error(capsys, exported, "--format", "onnx", "--output", tmp_path / "w")
    assert "a SavedModel" in err and "run directory" in err
    err = _export_error(capsys, tmp_path / "missing", "--output", tmp_path / "v")
    assert "missing" in err
    assert list(tmp_path.iterdir()) == []
