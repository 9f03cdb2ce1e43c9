"""COCO box metrics through pycocotools.

kdetect does not re-implement COCO's matching: it builds a ground-truth dataset and a results
list and runs ``pycocotools.cocoeval.COCOeval(gt, gt.loadRes(results), "bbox")``, so the numbers
are pycocotools' own. Where the ground truth comes from a COCO instances JSON, that JSON is used
as is (its ``area`` - the segmentation area - decides small/medium/large, and ``iscrowd`` regions
absorb detections without counting as misses). Ground truth from other formats is converted with
``area = w * h`` and ``iscrowd = difficult``.

Per-class AP is the mean of ``eval["precision"][:, :, k, area=all, maxDets=100]`` over the entries
that are defined (the same definition Detectron2 reports).
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np

# The twelve numbers of COCOeval.summarize(), in its order.
COCO_KEYS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


def normalize_coco_gt(dataset: dict) -> dict:
    """A copy of a COCO instances dict with the keys COCOeval needs (``area``, ``iscrowd``, ``id``).

    Missing ``area`` becomes the box area, missing ``iscrowd`` becomes 0, missing ids are numbered.
    """
    out = {
        "info": dataset.get("info", {}),
        "images": list(dataset.get("images", [])),
        "categories": list(dataset.get("categories", [])),
        "annotations": [],
    }
    for i, ann in enumerate(dataset.get("annotations", [])):
        ann = dict(ann)
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        out["annotations"].append(ann)
    return out


def coco_evaluate(
    gt_dataset: dict, results: list[dict]
) -> tuple[dict, dict[str, np.ndarray | None], dict]:
    """Run pycocotools' box evaluation.

    Args:
        gt_dataset: a COCO instances dict (``images``, ``annotations``, ``categories``).
        results: COCO results, ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``;
            their image and category ids must exist in ``gt_dataset``.

    Returns:
        ``(metrics, pr_curves, category_names)``: the twelve summary numbers plus ``per_class`` AP
        keyed by category name (``None`` where a number is undefined, i.e. pycocotools' -1:
        no ground truth in that class or area range), the precision at IoU 0.5 over COCO's 101
        recall points per class (for plots), and the category id -> name map.
    """
    # Deferred: pycocotools imports matplotlib (half a second), which VOC metrics and the
    # offline readers never need.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = normalize_coco_gt(gt_dataset)
        gt.createIndex()
        if results:
            dt = gt.loadRes(copy.deepcopy(list(results)))
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = {
                "images": list(gt.dataset["images"]),
                "categories": copy.deepcopy(gt.dataset["categories"]),
                "annotations": [],
            }
            dt.createIndex()
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics: dict = {"metric": "coco"}
    for key, value in zip(COCO_KEYS, evaluator.stats, strict=True):
        metrics[key] = None if value < 0 else float(value)
    names = {cat["id"]: cat.get("name", str(cat["id"])) for cat in gt.dataset["categories"]}
    metrics["per_class"], curves = _per_class(evaluator, names)
    metrics["num_images"] = len(evaluator.params.imgIds)
    metrics["num_detections"] = len(results)
    return metrics, curves, names


def _per_class(evaluator, names: dict) -> tuple[dict, dict]:
    """Per category (by name): AP over all IoU thresholds and recall points (None when
    undefined), and the precision at IoU 0.5 over the recall points (for plots), all areas and
    the most detections."""
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    area_all = list(evaluator.params.areaRngLbl).index("all")
    max_dets = len(evaluator.params.maxDets) - 1
    per_class: dict[str, float | None] = {}
    curves: dict[str, np.ndarray | None] = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, area_all, max_dets]
        defined = p[p > -1]
        name = names[cat_id]
        per_class[name] = float(np.mean(defined)) if defined.size else None
        p50 = precision[0, :, k, area_all, max_dets]
        curves[name] = None if np.all(p50 < 0) else np.where(p50 < 0, 0.0, p50)
    return per_class, curves


def recall_thresholds() -> np.ndarray:
    """COCO's 101 recall points (0, 0.01, ..., 1), as pycocotools builds them."""
    return np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
