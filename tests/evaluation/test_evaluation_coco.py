"""COCO metrics against the cocoapi golden numbers, and the three dataset formats agreeing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kdetect.evaluation import COCO_KEYS, evaluate_offline, load_ground_truth

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
GOLDEN = DATA / "coco_eval_golden"
GT_JSON = GOLDEN / "instances_val2014_100.json"
RESULTS = GOLDEN / "instances_val2014_fakebbox100_results.json"

# README.txt of coco_eval_golden: COCOeval(gt, gt.loadRes(results), "bbox") over all 100 images
# (imgIds = sorted(gt ids)[:100]); full precision from faster_coco_eval's tests.
EXPECTED = dict(
    zip(
        COCO_KEYS,
        [
            0.5045806987249628,
            0.6969727247299577,
            0.5729816669904824,
            0.5856257209410443,
            0.5193996948036719,
            0.5013978986347466,
            0.38681277964578054,
            0.5936795762842003,
            0.595352982877607,
            0.6398109626113442,
            0.5664205978994309,
            0.5642905982905982,
        ],
        strict=True,
    )
)

needs_golden = pytest.mark.skipif(not GT_JSON.is_file(), reason="coco_eval_golden absent")


def assert_golden(metrics: dict) -> float:
    assert metrics["metric"] == "coco"
    assert metrics["num_images"] == 100
    worst = max(abs(metrics[key] - value) for key, value in EXPECTED.items())
    assert worst <= 1e-6, {key: (metrics[key], value) for key, value in EXPECTED.items()}
    return worst


def results_as_prediction_lines(path: Path) -> None:
    """The golden COCO results rewritten as kdetect prediction JSON lines (xyxy, names)."""
    gt = json.loads(GT_JSON.read_text())
    results = json.loads(RESULTS.read_text())
    names = {cat["id"]: cat["name"] for cat in gt["categories"]}
    lines = []
    for image in gt["images"]:
        objects = [
            {
                "bbox": [
                    r["bbox"][0],
                    r["bbox"][1],
                    r["bbox"][0] + r["bbox"][2],
                    r["bbox"][1] + r["bbox"][3],
                ],
                "label": names[r["category_id"]],
                "score": r["score"],
            }
            for r in results
            if r["image_id"] == image["id"]
        ]
        row = {"file": image["file_name"], "width": image["width"], "height": image["height"]}
        lines.append(json.dumps({**row, "objects": objects}))
    path.write_text("\n".join(lines) + "\n")


@needs_golden
def test_golden_coco_results_file():
    metrics = evaluate_offline(GT_JSON, RESULTS, metric="coco")
    assert_golden(metrics)
    assert metrics["num_detections"] == 734
    assert len(metrics["per_class"]) == 80
    defined = [v for v in metrics["per_class"].values() if v is not None]
    assert 0 < len(defined) <= 80 and all(0 <= v <= 1 for v in defined)


@needs_golden
def test_golden_from_prediction_lines_and_folder(tmp_path):
    # kdetect's own JSON lines (matched by file name, classes by name, xyxy boxes) and the
    # dataset given as a folder + split give the same numbers.
    lines = tmp_path / "pred.jsonl"
    results_as_prediction_lines(lines)
    assert_golden(evaluate_offline(GOLDEN, lines, split="val2014_100"))


@needs_golden
def test_golden_ground_truth_keeps_crowd_as_difficult():
    gt = load_ground_truth(GT_JSON, "coco", "val2014_100")
    assert len(gt.annotations) == 100
    assert sum(int(r.difficult.sum()) for r in gt.annotations.records) == 9
    assert sum(len(r.labels) for r in gt.annotations.records) == 839
    # VOC metrics also run on COCO ground truth (crowd regions are 'difficult').
    metrics = evaluate_offline(GT_JSON, RESULTS, metric="voc")
    assert 0 < metrics["mAP"] < 1


def write_jittered_predictions(records, classes, path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        for record in records:
            objects = []
            for box, label in zip(record.boxes, record.labels, strict=True):
                for _ in range(int(rng.integers(0, 3))):
                    noisy = box + rng.normal(0, 0.08 * (box[2] - box[0] + 1), size=4)
                    objects.append(
                        {
                            "bbox": [round(float(v), 2) for v in noisy],
                            "label": classes[int(label)],
                            "score": round(float(rng.random()), 3),
                        }
                    )
            row = {
                "file": Path(record.filename).name,
                "width": record.width,
                "height": record.height,
                "objects": objects,
            }
            handle.write(json.dumps(row) + "\n")


@pytest.mark.skipif(not (DATA / "raccoon").is_dir(), reason="shared/data/raccoon absent")
def test_voc_coco_and_csv_ground_truth_agree(tmp_path):
    root = DATA / "raccoon"
    voc = load_ground_truth(root, "voc", "val")
    lines = tmp_path / "pred.jsonl"
    write_jittered_predictions(voc.annotations.records, voc.annotations.classes, lines)
    sources = {"voc": root, "coco": root / "coco" / "instances_val.json", "csv": root / "csv"}
    for metric in ("voc07", "voc", "coco"):
        results = {fmt: evaluate_offline(path, lines, metric, fmt) for fmt, path in sources.items()}
        key = "AP" if metric == "coco" else "mAP"
        values = {fmt: m[key] for fmt, m in results.items()}
        assert 0.2 < values["voc"] < 1.0, values
        assert values["coco"] == pytest.approx(values["voc"], abs=1e-12), values
        assert values["csv"] == pytest.approx(values["voc"], abs=1e-12), values
        assert {m["num_images"] for m in results.values()} == {40}
