"""The benchmark suite runs, and its side-by-side timing protocol pairs the right numbers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
import imported  # noqa: E402
import numpy as np  # noqa: E402
import peer_torchvision  # noqa: E402


def test_peer_serve_answers_one_timed_step_per_command(monkeypatch):
    built, calls = [], []

    def fake_make_step(mode, batch_size, threads=None, **options):
        assert options == {}  # no checkpoint: the random-weight model
        built.append((mode, batch_size))
        return lambda: calls.append((mode, batch_size))

    monkeypatch.setattr(peer_torchvision, "make_step", fake_make_step)
    out = io.StringIO()
    peer_torchvision.serve(io.StringIO("step train 2\nstep train 2\nstep inference 8\n"), out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"ready": True}
    assert len(lines) == 4 and all(line["seconds"] >= 0 for line in lines[1:])
    assert built == [("train", 2), ("inference", 8)]  # each step is built once ...
    assert calls == [("train", 2)] * 3 + [("inference", 8)] * 2  # ... and warmed up once


def test_peer_serve_builds_every_step_on_the_checkpoint_and_inputs_it_was_given(monkeypatch):
    options = []

    def fake_make_step(mode, batch_size, threads=None, **given):
        options.append(given)
        return lambda: None

    monkeypatch.setattr(peer_torchvision, "make_step", fake_make_step)
    out = io.StringIO()
    commands = io.StringIO("step train 2\nstep inference 1\n")
    peer_torchvision.serve(
        commands, out, weights="w.pth", inputs="in.npz", arch="fcos_resnet50_fpn"
    )
    assert options == [{"weights": "w.pth", "inputs": "in.npz", "arch": "fcos_resnet50_fpn"}] * 2


def test_every_importable_architecture_has_an_imported_config_with_its_own_resize():
    """Each torchvision builder kdetect imports is benchmarked against torchvision, each
    trained at the frame torchvision's transform makes of the 480x640 photos."""
    from kdetect.models.registry import architectures

    benchmarked = {c["imported"] for c in common.CONFIGS.values() if "imported" in c}
    single_stage = {a for a, kind in architectures().items() if kind != "faster_rcnn"}
    assert single_stage <= benchmarked and "fasterrcnn_resnet50_fpn" in benchmarked
    for arch in benchmarked:
        assert imported.REFERENCES[imported.architecture_type(arch)].is_file()
    frames = {
        "retinanet_resnet50_fpn": (800, 1088),  # min_max 800x1066, padded to 32
        "fcos_resnet50_fpn": (800, 1088),
        "ssd300_vgg16": (300, 300),  # fixed: stretched, not padded
        "ssdlite320_mobilenet_v3_large": (320, 320),
    }
    for arch, frame in frames.items():
        assert imported.train_frame(arch, (480, 640)) == frame


def test_exported_table_says_which_export_could_not_be_made():
    import exported

    result = {
        "export_s": {"onnx": 12.0},
        "errors": {"tflite": "ConverterError: too slow"},
        "latency_s": {"keras": 2.0, "onnx": 1.0},
        "ratio_to_keras": {"onnx": 0.5},
    }
    (row,) = exported.table_rows({"imported_fcos_resnet50_fpn": result})
    assert row[2:] == ["2.000", "1.000 (0.50x)", "no export (ConverterError: too slow)", "12 / -"]


def test_imported_training_batch_is_torchvisions_transform_of_the_same_inputs(tmp_path):
    """480x640 photos: torchvision resizes to 800x1066 and pads to 800x1088; kdetect's batch
    is at that frame, boxes scaled by torchvision's ratios, padding normalising to 0."""
    from kdetect.backbones.networks import IMAGENET_MEAN_RGB

    arch = common.CONFIGS["imported_resnet50_fpn"]["imported"]
    assert imported.min_max_size(arch, (480, 640)) == (800, 1066)
    assert imported.train_frame(arch, (480, 640)) == (800, 1088)
    assert imported.train_frame(arch, (600, 1000)) == (800, 1344)  # 800x1333
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    path = imported.write_inputs(tmp_path, images, train_batch=2)
    with np.load(path) as data:
        assert data["images"].shape == (3, 48, 64, 3) and data["images"].dtype == np.uint8
        boxes, labels = data["boxes"], data["labels"]
    assert boxes.shape == (2, 5, 4) and labels.shape == (2, 5)
    assert (boxes[..., 2] <= 64).all() and (boxes[..., 3] <= 48).all()

    class Transform:  # FasterRCNN.transform with min_size 80: 48x64 -> 80x106.67
        def resized_size(self, height, width):
            return 80, 106

    class Model:  # what train_batch reads of FasterRCNN: its transform's rule and frame
        image_size = (96, 128)
        transform = Transform()

    batch = imported.train_batch(Model(), images[:2], boxes, labels)
    frame = batch["images"]
    assert frame.shape == (2, 96, 128, 3)
    mean = np.asarray(IMAGENET_MEAN_RGB, "float32") * 255
    np.testing.assert_allclose(frame[:, 80:], np.broadcast_to(mean, frame[:, 80:].shape))
    np.testing.assert_allclose(frame[:, :, 106:], np.broadcast_to(mean, frame[:, :, 106:].shape))
    np.testing.assert_allclose(frame[:, :80, :106].mean(), images[:2].mean(), rtol=0.02)
    scale = np.array([106 / 64, 80 / 48] * 2, "float32")
    np.testing.assert_allclose(batch["bounding_boxes"]["boxes"], boxes * scale, rtol=1e-6)
    np.testing.assert_array_equal(batch["bounding_boxes"]["labels"], labels)


def test_photos_are_same_size_uint8(tmp_path):
    images, source = imported.photos(2, (48, 64), folder=tmp_path / "absent")
    assert images.shape == (2, 48, 64, 3) and images.dtype == np.uint8
    assert source == "random uint8"
    if imported.PHOTOS.is_dir():
        images, source = imported.photos(2, (48, 64))
        assert images.shape == (2, 48, 64, 3) and "photos" in source


class _FakePeer:
    def __init__(self, seconds):
        self.seconds = iter(seconds)
        self.calls = []

    def step(self, mode, batch_size):
        self.calls.append((mode, batch_size))
        return next(self.seconds)


def test_side_by_side_alternates_and_takes_the_median_of_pair_ratios(monkeypatch):
    clock = iter([0.0, 1.0, 1.0, 2.0, 2.0, 4.0])  # our three timed runs take 1, 1 and 2 s
    monkeypatch.setattr(common, "_clock", lambda: next(clock))
    order = []
    peer = _FakePeer([99.0, 4.0, 1.0, 2.0])  # the warm-up's answer, then one per pair
    fake_step = peer.step
    peer.step = lambda mode, batch_size: order.append("peer") or fake_step(mode, batch_size)
    mine, theirs, ratio = common.side_by_side(
        lambda: order.append("ours"), peer, "train", 2, repeats=3
    )
    assert order == ["ours", "peer"] * 4  # the warm-ups, then strictly alternating pairs
    assert peer.calls == [("train", 2)] * 4
    assert (mine, theirs) == (1.0, 2.0)
    assert ratio == 1.0  # median of 1/4, 1/1, 2/2 (the ratio of the medians would be 0.5)


def test_python_m_benchmarks_prints_the_table_for_the_tiny_config(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--configs", "tiny", "--repeats", "1"]
        + ["--skip-data", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kdetect tiny" in proc.stdout
    numbers = json.loads(out.read_text())["tiny"]
    assert numbers["train"] > 0 and numbers["infer_b1"] > 0 and numbers["infer_b8"] > 0
    assert "ratio" not in numbers  # no peer asked for
    exported = json.loads(out.read_text())["exported"]["tiny"]
    assert all(exported["latency_s"][key] > 0 for key in ("keras", "onnx", "tflite"))
    assert "onnxruntime" in proc.stdout and "LiteRT" in proc.stdout


def test_imported_config_without_a_torch_interpreter_says_what_it_needs(tmp_path):
    import importlib.util

    if importlib.util.find_spec("torch"):
        return  # torch in this interpreter: the configuration would run
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--configs", "imported_resnet50_fpn"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, "KDETECT_TORCH_PYTHON": str(tmp_path / "none")},
    )
    assert proc.returncode == 2
    assert "needs a Python with torch and torchvision" in proc.stderr
