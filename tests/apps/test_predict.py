"""``kdetect predict`` and ``kdetect checkpoint`` on a tiny trained run; the Detector API."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdetect.apps.predict import Detector, collect_inputs
from kdetect.plumbing.errors import CheckpointError, DataError, KdetectError
from tests.train_support import kdetect, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def detector(run):
    return Detector(run, min_score=0.0)


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _check_line(line: dict, classes: list[str]) -> None:
    assert list(line) == ["file", "width", "height", "objects"]
    assert isinstance(line["width"], int) and isinstance(line["height"], int)
    for obj in line["objects"]:
        assert list(obj) == ["bbox", "label", "label_id", "score"]
        x1, y1, x2, y2 = obj["bbox"]
        assert 0 <= x1 <= x2 <= line["width"] and 0 <= y1 <= y2 <= line["height"]
        assert obj["label"] == classes[obj["label_id"]]
        assert 0.0 <= obj["score"] <= 1.0


def test_predict_folder_to_stdout_and_drawn_images(run, tmp_path, capsys):
    drawn = tmp_path / "drawn"
    rc = kdetect("predict", run, run / "samples", "--min-score", "0", "--save-images", drawn)
    assert rc == 0
    lines = _lines(capsys.readouterr().out)
    samples = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert [line["file"].rsplit("/", 1)[-1] for line in lines] == samples
    for line in lines:
        _check_line(line, ["circle", "rectangle", "triangle"])
        assert (line["width"], line["height"]) == (64, 64)
    assert sorted(p.name for p in drawn.iterdir()) == samples
    with Image.open(drawn / samples[0]) as image:
        assert image.size == (320, 320)  # 64 px enlarged 5x (DRAW_MIN_SIDE) so labels read


def test_iou_and_agnostic_reach_the_model(run, capsys):
    """``--iou`` and ``--agnostic``: no two kept boxes overlap by more than the IoU given,
    whatever their classes; the default keeps some such pairs on this tiny run."""
    from tests.helpers import ref_iou_matrix

    def overlapping(*flags) -> int:
        assert kdetect("predict", run, run / "samples", "--min-score", "0", *flags) == 0
        total = 0
        for line in _lines(capsys.readouterr().out):
            boxes = np.array([o["bbox"] for o in line["objects"]], "float32").reshape(-1, 4)
            total += int(np.triu(ref_iou_matrix(boxes, boxes) > 0.2 + 1e-3, k=1).sum())
        return total

    assert overlapping() > 0
    assert overlapping("--iou", "0.2", "--agnostic") == 0
    assert kdetect("predict", run, run / "samples", "--iou", "0") == 2  # (0, 1]


def test_image_size_reaches_the_model(run, capsys):
    """``--image-size`` predicts as the Python API's ``Detector(image_size=...)``, differently
    from the run's own frame; a size the network cannot take is one clear error."""
    sample = sorted((run / "samples").glob("*.png"))[0]

    def objects(*flags) -> list[dict]:
        assert kdetect("predict", run, sample, "--min-score", "0", *flags) == 0
        return _lines(capsys.readouterr().out)[0]["objects"]

    larger = objects("--image-size", "128")
    own = objects()
    python = Detector(run, min_score=0.0, image_size=(128, 128)).predict([sample])[0]["objects"]
    assert larger == python
    assert larger != own
    assert objects("--image-size", "96,128") != larger
    assert kdetect("predict", run, sample, "--image-size", "0") == 2
    assert kdetect("predict", run, sample, "--image-size", "a,b") == 2
    assert kdetect("predict", run, sample, "--image-size", "100") == 1
    assert "multiples of 32" in capsys.readouterr().err


def test_predict_paths_is_the_commands_loop_in_python(run, detector, tmp_path, capsys):
    """``Detector.predict_paths`` yields the lines ``kdetect predict`` prints for a folder and
    draws the same pictures; a missing path raises before anything is predicted."""
    assert kdetect("predict", run, run / "samples", "--min-score", "0") == 0
    printed = _lines(capsys.readouterr().out)
    drawn = tmp_path / "drawn"
    lines = list(detector.predict_paths([run / "samples"], batch_size=2, save_images=drawn))
    assert lines == printed
    assert sorted(p.name for p in drawn.iterdir()) == [Path(line["file"]).name for line in lines]
    with pytest.raises(DataError, match="no such file or folder"):
        next(detector.predict_paths([run / "samples", tmp_path / "nothere.jpg"]))


def test_predict_files_to_output(run, tmp_path, capsys):
    big = tmp_path / "big.jpg"
    Image.fromarray(np.full((90, 120, 3), 200, np.uint8)).save(big)
    output = tmp_path / "out.jsonl"
    sample = sorted((run / "samples").glob("*.png"))[0]
    args = ["predict", run, sample, big, "--output", output, "--min-score", "0"]
    assert kdetect(*args, "--max-detections", "2", "--only", "circle", "--only", "triangle") == 0
    lines = _lines(output.read_text())
    captured = capsys.readouterr()
    assert captured.out == ""
    # The closing summary: images, seconds per image, objects per class.
    found = sum(len(line["objects"]) for line in lines)
    summary = " ".join(captured.err.split())
    assert "predicted 2 image(s) in " in summary and f": {found} object(s)" in summary
    assert " s per image" in summary
    assert [line["file"] for line in lines] == [str(sample), str(big)]
    assert (lines[1]["width"], lines[1]["height"]) == (120, 90)  # boxes in the input's pixels
    for line in lines:
        _check_line(line, ["circle", "rectangle", "triangle"])
        assert len(line["objects"]) <= 2
        assert {o["label"] for o in line["objects"]} <= {"circle", "triangle"}
        scores = [o["score"] for o in line["objects"]]
        assert scores == sorted(scores, reverse=True)


def test_class_filters_and_score_threshold(detector, run):
    image = np.asarray(Image.open(sorted((run / "samples").glob("*.png"))[0]).convert("RGB"))
    everything = detector.predict(image)[0]["objects"]
    assert everything, "a model at min_score 0 returns its detections"
    model, classes = detector.model, detector.classes
    only = Detector(model, classes, min_score=0.0, only=["circle"]).predict(image)[0]["objects"]
    assert only == [o for o in everything if o["label"] == "circle"]
    ignored = Detector(model, classes, min_score=0.0, ignore=["circle", "triangle"])
    assert ignored.predict(image)[0]["objects"] == [
        o for o in everything if o["label"] == "rectangle"
    ]
    threshold = sorted(o["score"] for o in everything)[len(everything) // 2]
    high = Detector(model, classes, min_score=threshold).predict(image)[0]["objects"]
    assert high == [o for o in everything if o["score"] >= threshold]
    top = Detector(model, classes, min_score=0.0, max_detections=1).predict(image)[0]["objects"]
    assert top == everything[:1]
    with pytest.raises(KdetectError, match="did you mean circle"):
        Detector(model, classes, only=["circel"])


def test_unknown_class_on_the_command_line(run, capsys):
    sample = sorted((run / "samples").glob("*.png"))[0]
    assert kdetect("predict", run, sample, "--ignore", "sqare") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ignore: unknown class 'sqare'" in err[0]


def test_predict_recursive_folders(run, tmp_path, capsys):
    sample = sorted((run / "samples").glob("*.png"))[0]
    nested = tmp_path / "photos" / "day1"
    nested.mkdir(parents=True)
    Image.open(sample).save(nested / "a.png")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    items, problems = collect_inputs([tmp_path / "photos"])
    assert not items and "use --recursive" in problems[0]
    drawn = tmp_path / "drawn"
    assert kdetect("predict", run, tmp_path / "photos", "-r", "--save-images", drawn) == 0
    assert [line["file"] for line in _lines(capsys.readouterr().out)] == [str(nested / "a.png")]
    assert (drawn / "day1" / "a.png").is_file()


def test_corrupt_image_is_reported_and_skipped(run, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    good = sorted((run / "samples").glob("*.png"))[0]
    assert kdetect("predict", run, bad, good, tmp_path / "missing.png") == 1
    captured = capsys.readouterr()
    assert [line["file"] for line in _lines(captured.out)] == [str(good)]
    err = captured.err.strip().splitlines()
    assert any(str(bad) in line for line in err)
    assert any("missing.png: no such file or folder" in line for line in err)
    assert err[-1] == "error: 2 of 3 input(s) could not be read"


def test_missing_checkpoint_exits_1_with_one_line(tmp_path, capsys):
    assert kdetect("predict", tmp_path / "no-run", tmp_path) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        f"error: {tmp_path / 'no-run'}: no such run directory or model file"
    ]
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert kdetect("predict", empty, tmp_path) == 1
    assert "no model.keras or checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
    assert kdetect("predict", broken, tmp_path / "image.png") == 1
    assert "cannot load model" in capsys.readouterr().err


def test_video_without_opencv_is_a_clear_error(run, tmp_path, capsys):
    pytest.importorskip("kdetect.data.shapes")
    try:
        import cv2  # noqa: F401

        pytest.skip("OpenCV is installed")
    except ImportError:
        pass
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    assert kdetect("predict", run, video) == 1
    assert "opencv-python-headless" in capsys.readouterr().err


def test_detector_api(detector, run):
    assert detector.classes == ["circle", "rectangle", "triangle"]
    sample = sorted((run / "samples").glob("*.png"))[0]
    image = np.asarray(Image.open(sample).convert("RGB"))
    from_path, from_array = detector.predict([sample, image])
    assert from_path["file"] == str(sample) and from_array["file"] is None
    assert from_path["objects"] == from_array["objects"]
    batch = detector.predict(np.stack([image, image]))
    assert len(batch) == 2 and batch[0]["objects"] == batch[1]["objects"]
    with pytest.raises(DataError):
        detector.predict(sample.with_name("missing.png"))
    for bad in (np.zeros((64, 64), "uint8"), np.zeros((1, 1, 64, 64, 3), "uint8")):
        with pytest.raises(ValueError, match=r"expected an \[H, W, 3\] image or a \[B, H, W, 3\]"):
            detector.predict(bad)
    with pytest.raises(ValueError, match=r"image 0: expected an \[H, W, 3\] image, got shape"):
        detector.predict([image[..., :1]])
    assert detector.predict(np.zeros((0, 64, 64, 3), "uint8")) == []
    with pytest.warns(UserWarning, match="at most 1.0") as record:
        detector.predict(image / 255.0)
    assert len(record) == 1 and record[0].filename == __file__  # points here, not at kdetect
    assert detector.predict(image)[0]["objects"] == from_array["objects"]  # still usable
    with pytest.raises(KdetectError, match="^min_score: "):
        Detector(detector.model, detector.classes, min_score=2)
    assert detector.draw(image, from_path["objects"]).size == (320, 320)  # enlarged to read


def test_collect_inputs(tmp_path):
    (tmp_path / "b.jpg").write_bytes(b"")
    (tmp_path / "a.PNG").write_bytes(b"")
    (tmp_path / "x.txt").write_text("")
    items, problems = collect_inputs([tmp_path, tmp_path / "nope.jpg"])
    assert [i.path.name for i in items] == ["a.PNG", "b.jpg"]
    assert problems == [f"{tmp_path / 'nope.jpg'}: no such file or folder"]


def test_checkpoint_list_info_pack_unpack(run, detector, tmp_path, capsys):
    assert kdetect("checkpoint", "list", run.parent) == 0
    assert run.name in capsys.readouterr().out
    assert kdetect("checkpoint", "info", run, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == ["circle", "rectangle", "triangle"]
    assert info["epochs"] == 1 and info["recipe"]["model"]["backbone"] == "tiny"

    packed = tmp_path / "tiny.kdet"
    assert kdetect("checkpoint", "pack", run, "-o", packed) == 0
    with zipfile.ZipFile(packed) as zf:
        assert {"model.keras", "classes.json", "recipe.yaml", "kdetect.json"} <= set(zf.namelist())
    assert kdetect("checkpoint", "info", packed) == 0
    capsys.readouterr()

    # a packed run predicts like the run directory it came from
    sample = sorted((run / "samples").glob("*.png"))[0]
    from_run = detector.predict(sample)
    assert kdetect("predict", packed, sample, "--min-score", "0") == 0
    assert _lines(capsys.readouterr().out) == from_run

    dest = tmp_path / "unpacked"
    assert kdetect("checkpoint", "unpack", packed, dest) == 0
    assert (dest / "model.keras").is_file() and (dest / "classes.json").is_file()
    assert kdetect("checkpoint", "unpack", packed, dest) == 1  # a run now: never replaced
    assert f"DEST {dest}: is the run {dest}; choose another path" in capsys.readouterr().err
    (dest / "kdetect.json").unlink()
    (dest / "model.keras").unlink()  # a folder that is not a run, but not empty
    assert kdetect("checkpoint", "unpack", packed, dest) == 1
    assert "already exists" in capsys.readouterr().err


def test_checkpoint_errors(tmp_path, capsys):
    assert kdetect("checkpoint", "info", tmp_path / "nothing") == 1
    assert "no such run directory" in capsys.readouterr().err
    fake = tmp_path / "fake.kdet"
    fake.write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        from kdetect.runs import inspect_run

        inspect_run(fake)
