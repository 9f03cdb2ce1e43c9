"""VOC AP against an independent NumPy transcription of py-faster-rcnn's voc_eval.py, plus
hand-worked cases, perfect/empty detectors and evaluate_model with a fake detector."""

from __future__ import annotations

import numpy as np
import pytest

from kdetect.data.records import Annotations, Record
from kdetect.evaluation import (
    ImageDetections,
    evaluate_detections,
    evaluate_model,
    voc_ap,
    voc_evaluate,
    voc_iou,
)

# --------------------------------------------------------------------------------------------
# Reference: a literal transcription of the devkit algorithm (voc_eval.py structure: class_recs
# dict, detections sorted by -confidence, loop with ovmax/jmax, +1 pixel areas), kept
# deliberately close to the original and independent of kdetect's implementation.


def ref_voc_ap(rec, prec, use_07_metric):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def ref_voc_eval(recs, dets, classname, ovthresh=0.5, use_07_metric=False):
    """recs: {image: [{"name", "bbox", "difficult"}]}; dets: [(image, class, score, bbox)]."""
    class_recs = {}
    npos = 0
    for imagename, objects in recs.items():
        R = [obj for obj in objects if obj["name"] == classname]
        bbox = np.array([x["bbox"] for x in R], dtype=np.float64).reshape(-1, 4)
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": det}

    lines = [d for d in dets if d[1] == classname]
    image_ids = [x[0] for x in lines]
    confidence = np.array([x[2] for x in lines], dtype=np.float64)
    BB = np.array([x[3] for x in lines], dtype=np.float64).reshape(-1, 4)

    # The devkit (MATLAB) sort is stable; so is this one.
    sorted_ind = np.argsort(-confidence, kind="mergesort")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]

    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                - inters
            )
            with np.errstate(divide="ignore", invalid="ignore"):
                overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0

    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = ref_voc_ap(rec, prec, use_07_metric)
    return rec, prec, ap, npos


# --------------------------------------------------------------------------------------------
# Random problems


def random_problem(rng: np.random.Generator, num_images: int, num_classes: int):
    """Ground truth and detections with difficult flags, duplicates, near misses, tied scores,
    images without objects and classes without ground truth."""
    gt, dets = [], []
    absent = int(rng.integers(num_classes))  # one class never has ground truth
    for _ in range(num_images):
        m = int(rng.integers(0, 6))
        xy = rng.integers(0, 200, size=(m, 2)).astype(np.float64)
        wh = rng.integers(0, 80, size=(m, 2)).astype(np.float64)  # 0 = one-pixel box
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(0, num_classes, size=m)
        labels[labels == absent] = (absent + 1) % num_classes
        difficult = rng.random(m) < 0.2
        gt.append((boxes, labels, difficult))

        det_boxes, det_labels = [], []
        for box, label in zip(boxes, labels, strict=True):
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 (a duplicate) hits per object
                jitter = rng.normal(0, rng.choice([1.0, 6.0, 15.0]), size=4)
                det_boxes.append(box + np.round(jitter, int(rng.integers(0, 3))))
                det_labels.append(label if rng.random() < 0.9 else rng.integers(num_classes))
        for _ in range(int(rng.integers(0, 4))):  # background false positives
            x, y = rng.uniform(0, 200, size=2)
            w, h = rng.uniform(1, 80, size=2)
            det_boxes.append([x, y, x + w, y + h])
            det_labels.append(rng.integers(num_classes))
        n = len(det_boxes)
        scores = np.round(rng.random(n), 1)  # coarse scores: plenty of ties
        dets.append((np.array(det_boxes).reshape(-1, 4), scores, np.array(det_labels, int)))
    return gt, dets


def to_reference(gt, dets, classes):
    recs, lines = {}, []
    for i, (boxes, labels, difficult) in enumerate(gt):
        recs[i] = [
            {"name": classes[int(lab)], "bbox": list(box), "difficult": bool(d)}
            for box, lab, d in zip(boxes, labels, difficult, strict=True)
        ]
    for i, (boxes, scores, labels) in enumerate(dets):
        for box, score, lab in zip(boxes, scores, labels, strict=True):
            lines.append((i, classes[int(lab)], float(score), list(box)))
    return recs, lines


@pytest.mark.parametrize("metric", ["voc07", "voc"])
def test_matches_reference_on_random_sets(metric):
    rng = np.random.default_rng(2024 if metric == "voc" else 7)
    classes = ["a", "b", "c", "d"]
    largest = 0.0
    compared = 0
    for _ in range(150):
        gt, dets = random_problem(rng, int(rng.integers(1, 12)), len(classes))
        metrics, curves = voc_evaluate(classes, gt, dets, metric)
        recs, lines = to_reference(gt, dets, classes)
        ref_aps = []
        for name in classes:
            rec, prec, ap, npos = ref_voc_eval(recs, lines, name, use_07_metric=metric == "voc07")
            assert curves[name].num_positives == npos
            if npos == 0:
                assert metrics["per_class"][name] is None
                continue
            ref_aps.append(ap)
            np.testing.assert_array_equal(curves[name].recall, rec)
            np.testing.assert_array_equal(curves[name].precision, prec)
            largest = max(largest, abs(metrics["per_class"][name] - ap))
            compared += 1
        if ref_aps:
            assert metrics["mAP"] == pytest.approx(np.mean(ref_aps), abs=1e-12)
    assert compared > 300
    assert largest <= 1e-12, largest


# --------------------------------------------------------------------------------------------
# Hand-worked cases


def one_class(gt_boxes, difficult, det_boxes, scores, metric):
    gt = [(np.array(gt_boxes, float).reshape(-1, 4), np.zeros(len(gt_boxes), int), difficult)]
    dets = [(np.array(det_boxes, float).reshape(-1, 4), np.array(scores), np.zeros(len(scores)))]
    metrics, curves = voc_evaluate(["x"], gt, dets, metric)
    return metrics["per_class"]["x"], curves["x"]


TWO_OBJECTS = [[0, 0, 9, 9], [20, 20, 29, 29]]
HIT_DUP_HIT = [[0, 0, 9, 9], [0, 0, 9, 9], [20, 20, 29, 29]]


def test_hand_worked_duplicate():
    # TP, FP (duplicate of the first object), TP -> recall .5 .5 1, precision 1 .5 2/3.
    ap, curve = one_class(TWO_OBJECTS, [False, False], HIT_DUP_HIT, [0.9, 0.8, 0.7], "voc")
    np.testing.assert_allclose(curve.recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(curve.precision, [1.0, 0.5, 2 / 3])
    # Area: envelope 1 up to recall .5, then 2/3 -> .5 * 1 + .5 * 2/3.
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    # 11-point: t = 0 .. 0.5 (six points) reach precision 1, t = 0.6 .. 1 (five) reach 2/3.
    ap07, _ = one_class(TWO_OBJECTS, [False, False], HIT_DUP_HIT, [0.9, 0.8, 0.7], "voc07")
    assert ap07 == pytest.approx((6 * 1 + 5 * 2 / 3) / 11, abs=1e-12)


def test_hand_worked_difficult_is_ignored():
    # Object 2 is difficult: the detection on it counts for nothing; npos = 1.
    dets = [[20, 20, 29, 29], [0, 0, 9, 9], [50, 50, 60, 60]]
    for metric in ("voc", "voc07"):
        ap, curve = one_class(TWO_OBJECTS, [False, True], dets, [0.9, 0.8, 0.7], metric)
        assert curve.num_positives == 1
        np.testing.assert_allclose(curve.recall, [0.0, 1.0, 1.0])
        np.testing.assert_allclose(curve.precision, [0.0, 1.0, 0.5])
        assert ap == pytest.approx(1.0, abs=1e-12)


def test_iou_must_exceed_half_with_plus_one_widths():
    # GT [0,0,9,9] is 10x10 = 100 px; [0,0,9,4] is 10x5 = 50 px inside it: IoU exactly 0.5.
    assert voc_iou([0, 0, 9, 4], [[0, 0, 9, 9]])[0] == 0.5
    assert one_class([[0, 0, 9, 9]], [False], [[0, 0, 9, 4]], [1.0], "voc")[0] == 0.0
    assert one_class([[0, 0, 9, 9]], [False], [[0, 0, 9, 5]], [1.0], "voc")[0] == 1.0
    # A one-pixel box ([x, y, x, y]) has area 1 and matches itself.
    assert voc_iou([3, 3, 3, 3], [[3, 3, 3, 3], [4, 4, 4, 4]]).tolist() == [1.0, 0.0]


def test_eleven_point_thresholds_are_the_references_floats():
    # 3 hits of 10 objects: recall 0.1, 0.2, 0.3 at precision 1. The reference's threshold
    # "0.3" is 3 * 0.1 = 0.30000000000000004 > 3 / 10, so only t = 0, .1, .2 count: 3/11.
    boxes = [[i * 20, 0, i * 20 + 9, 9] for i in range(10)]
    ap07, _ = one_class(boxes, [False] * 10, boxes[:3], [0.9, 0.8, 0.7], "voc07")
    assert ap07 == pytest.approx(3 / 11, abs=1e-12)
    ap, _ = one_class(boxes, [False] * 10, boxes[:3], [0.9, 0.8, 0.7], "voc")
    assert ap == pytest.approx(0.3, abs=1e-12)


def test_ties_keep_input_order():
    # Equal scores: the first listed detection is ranked first (stable, like MATLAB's sort).
    boxes = [[0, 0, 9, 9]]
    _, curve = one_class(boxes, [False], [[50, 50, 59, 59], [0, 0, 9, 9]], [0.5, 0.5], "voc")
    np.testing.assert_allclose(curve.precision, [0.0, 0.5])


def test_voc_ap_edge_cases():
    empty = np.zeros(0)
    assert voc_ap(empty, empty, True) == 0.0
    assert voc_ap(empty, empty, False) == 0.0
    assert voc_ap(np.array([1.0]), np.array([1.0]), True) == pytest.approx(1.0)
    assert voc_ap(np.array([1.0]), np.array([1.0]), False) == 1.0


# --------------------------------------------------------------------------------------------
# Whole-split behaviour


def make_annotations(rng: np.random.Generator, with_images: bool = False) -> Annotations:
    records = []
    for i in range(6):
        m = int(rng.integers(0, 4))
        xy = rng.integers(0, 40, size=(m, 2))
        boxes = np.concatenate([xy, xy + rng.integers(4, 20, size=(m, 2))], axis=1)
        image = np.full((64, 48 + 16 * (i % 2), 3), i, np.uint8) if with_images else None
        records.append(
            Record(
                filename=f"img_{i}.jpg",
                width=64,
                height=64,
                boxes=boxes,
                labels=rng.integers(0, 3, size=m),
                difficult=np.arange(m) == 2,
                image=image,
            )
        )
    records[0] = Record("img_0.jpg", 64, 64, [[1, 1, 20, 20]], [0], image=records[0].image)
    return Annotations(["cat", "dog", "bird"], records)


def perfect(annotations: Annotations) -> list[ImageDetections]:
    return [ImageDetections(r.boxes, np.ones(len(r.labels)), r.labels) for r in annotations.records]


@pytest.mark.parametrize("metric", ["voc07", "voc", "coco"])
def test_perfect_and_empty_detectors(metric):
    annotations = make_annotations(np.random.default_rng(0))
    metrics = evaluate_detections(annotations, perfect(annotations), metric)
    key = "AP" if metric == "coco" else "mAP"
    assert metrics[key] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in metrics["per_class"].values() if v is not None)
    empty = [ImageDetections.empty() for _ in annotations.records]
    metrics = evaluate_detections(annotations, empty, metric)
    assert metrics[key] == 0.0
    assert metrics["num_images"] == 6


def test_classes_without_ground_truth_are_left_out_of_the_mean():
    annotations = Annotations(
        ["a", "b", "c"],
        [Record("x.jpg", 50, 50, [[0, 0, 9, 9], [20, 20, 29, 29]], [0, 1], [False, False])],
    )
    dets = [ImageDetections([[0, 0, 9, 9], [30, 30, 40, 40]], [0.9, 0.8], [0, 2])]
    metrics = evaluate_detections(annotations, dets, "voc")
    assert metrics["per_class"] == {"a": 1.0, "b": 0.0, "c": None}
    assert metrics["mAP"] == 0.5
    assert metrics["num_ground_truth"] == {"a": 1, "b": 1, "c": 0}
    assert set(metrics) >= {"metric", "mAP", "per_class", "num_images", "num_detections"}


class FakeDetector:
    """Returns the ground truth of whichever record's image it is given (images are filled with
    the record index), padded with -1 labels; records the batch shapes it saw."""

    def __init__(self, annotations: Annotations, pad: int = 5):
        self.annotations = annotations
        self.pad = pad
        self.batches = []

    def predict(self, images):
        images = np.asarray(images)
        self.batches.append(images.shape)
        n = self.pad + max(len(r.labels) for r in self.annotations.records)
        out = {
            "boxes": np.zeros((len(images), n, 4), np.float32),
            "confidence": np.zeros((len(images), n), np.float32),
            "labels": np.full((len(images), n), -1, np.int32),
            "num_detections": np.zeros(len(images), np.int32),
        }
        for b, image in enumerate(images):
            record = self.annotations.records[int(image[0, 0, 0])]
            m = len(record.labels)
            out["boxes"][b, :m] = record.boxes
            out["confidence"][b, :m] = 0.9
            out["labels"][b, :m] = record.labels
            out["num_detections"][b] = m
        return out


@pytest.mark.parametrize("batch_size", [1, 4])
def test_evaluate_model_with_a_perfect_fake_detector(batch_size):
    annotations = make_annotations(np.random.default_rng(1), with_images=True)
    model = FakeDetector(annotations)
    metrics = evaluate_model(model, annotations, "voc07", batch_size=batch_size, progress=False)
    assert metrics["mAP"] == pytest.approx(1.0, abs=1e-12)  # 11 * (1/11) in floating point
    assert sum(shape[0] for shape in model.batches) == 6
    # Widths alternate 48/64, so equal-size batching never groups more than one image here.
    assert all(shape[0] == 1 for shape in model.batches)


def test_evaluate_model_reads_files_with_exif_rotation(tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated by 90 degrees
    Image.new("RGB", (40, 30), (0, 0, 0)).save(tmp_path / "rot.jpg", exif=exif)
    Image.new("RGB", (40, 30), (0, 0, 0)).save(tmp_path / "plain.png")
    annotations = Annotations(
        ["a"],
        [
            Record(str(tmp_path / "rot.jpg"), 30, 40, [[2, 2, 20, 30]], [0]),
            Record(str(tmp_path / "plain.png"), 40, 30, [[2, 2, 30, 20]], [0]),
        ],
    )
    model = FakeDetector(annotations)
    model.predict = lambda images, _m=model: FakeDetector.predict(_m, np.zeros_like(images))
    evaluate_model(model, annotations, "voc", progress=False)
    assert model.batches == [(1, 40, 30, 3), (1, 30, 40, 3)]
