"""``kdetect dataset transform|inspect`` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdetect.cli import main
from tests import data_support

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def leftovers(parent: Path) -> list[str]:
    """Anything transform may have left next to the output (temporary or half-written)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") or "tmp" in p.name)


def test_transform_then_inspect(tmp_path, capsys):
    root = data_support.write_coco(tmp_path / "coco")
    out = tmp_path / "out"
    rc = main(["dataset", "transform", str(root), "--type", "coco",
               "--split", "train", "--output", str(out), "--shards", "2"])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.json",
        "dataset.json",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["classes"] == ["cat", "dog"]
    assert summary["splits"]["train"]["images"] == 3
    assert summary["splits"]["train"]["boxes"] == 3
    assert leftovers(tmp_path) == []

    # re-running replaces the earlier output
    rc = main(["dataset", "transform", str(root), "--type", "coco",
               "--split", "train", "-o", str(out), "--limit", "2"])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.tfrecord")) == ["train-00000-of-00001.tfrecord"]
    assert json.loads((out / "dataset.json").read_text())["splits"]["train"]["images"] == 2

    capsys.readouterr()
    drawn = tmp_path / "drawn"
    rc = main(["dataset", "inspect", str(out), "--show", "2", "--output", str(drawn)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "images" in text and "boxes per class" in text and "cat" in text
    assert len(list(drawn.glob("*.jpg"))) == 2


def test_inspect_source_counts_invalid_boxes(tmp_path, capsys):
    h = data_support
    data = dict(h.TINY)
    data["b.jpg"] = (40, 50, [("cat", 0, 0, 20, 25, 0), ("dog", 30, 5, 30, 9, 0)])
    root = h.write_voc(tmp_path / "voc", data)
    assert main(["dataset", "inspect", str(root)]) == 0
    text = capsys.readouterr().out
    assert "invalid boxes" in text
    assert "b.xml: object 2 (dog)" in text.replace("\n", "")


@pytest.mark.parametrize("case", ["truncated", "missing", "bad_box", "unknown_class", "empty"])
def test_transform_bad_input_exits_1_and_leaves_nothing(tmp_path, capsys, case):
    h = data_support
    root = h.write_voc(tmp_path / "voc")
    extra = []
    if case == "truncated":
        jpeg = root / "JPEGImages" / "c.jpg"
        jpeg.write_bytes(jpeg.read_bytes()[:200])
        expected = "c.jpg: corrupt or truncated"
    elif case == "missing":
        (root / "JPEGImages" / "b.jpg").unlink()
        expected = "b.jpg not found"
    elif case == "bad_box":
        xml = root / "Annotations" / "b.xml"
        xml.write_text(xml.read_text().replace("<xmax>20</xmax>", "<xmax>99</xmax>"))
        expected = "b.xml: object 1 (cat) box [0, 0, 99, 25] reaches outside"
    elif case == "unknown_class":
        extra = ["--classes", "dog"]
        expected = "unknown class 'cat'"
    else:
        (root / "ImageSets" / "Main" / "train.txt").write_text("")
        expected = "has no images"
    out = tmp_path / "out"
    capsys.readouterr()
    argv = ["dataset", "transform", str(root), "--type", "voc",
            "--output", str(out), *extra]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert expected in err.replace("\n", "")
    assert len(err.strip().splitlines()) <= 3  # one message (wrapped), no traceback
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_transform_keeps_earlier_output_on_failure(tmp_path):
    h = data_support
    root = h.write_voc(tmp_path / "voc")
    out = tmp_path / "out"
    base = ["dataset", "transform", str(root), "--type", "voc"]
    assert main([*base, "--output", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())
    (root / "JPEGImages" / "a.jpg").write_bytes(b"garbage")
    assert main([*base, "--output", str(out)]) == 1
    assert sorted(p.name for p in out.iterdir()) == before
    assert leftovers(tmp_path) == []
    # a folder holding something else is never replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    (root / "JPEGImages" / "a.jpg").unlink()
    h._jpeg(root / "JPEGImages" / "a.jpg", 64, 48)
    assert main([*base, "--output", str(other)]) == 1
    assert (other / "keep.txt").read_text() == "mine"


def test_transform_bccd_with_on_invalid_box(tmp_path):
    if not (SHARED / "bccd" / "Annotations").is_dir():
        pytest.skip("shared data is not available")
    out = tmp_path / "bccd"
    base = ["dataset", "transform", str(SHARED / "bccd"), "--type", "csv",
            "--split", "val", "--output", str(out)]  # fmt: skip
    assert main(base) == 1  # two zero-area boxes, default error
    assert not out.exists()
    assert main([*base, "--on-invalid-box", "drop", "--limit", "6"]) == 0
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["classes"] == ["Platelets", "RBC", "WBC"]
    assert summary["splits"]["val"]["images"] == 6
