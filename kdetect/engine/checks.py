"""Checks of a dataset against a recipe's model, run before training (and by ``kdetect dataset
inspect --recipe``): is the data sound (:mod:`kdetect.data.quality`), do the anchors fit the boxes
(:mod:`kdetect.data.anchor_fit`)?"""

from __future__ import annotations

import numpy as np
from rich.markup import escape

from kdetect.data.anchor_fit import MIN_COVERAGE, anchor_coverage, best_anchor_iou, suggest_anchors
from kdetect.data.quality import boxes_in_frame, quality_report, quality_warnings
from kdetect.data.records import Annotations

#: Identical images are looked for in training sets of up to this many images (the check reads
#: every file).
MAX_HASHED_IMAGES = 5000


def anchor_report(model, annotations: Annotations, frame: tuple[int, int]) -> dict | None:
    """Coverage of the training boxes by ``model``'s anchors in ``frame`` at the IoUs of its
    anchor matching (:meth:`~kdetect.models.base.DetectionModel.anchor_boxes`; see
    :mod:`kdetect.data.anchor_fit`), and a better setting when fewer than
    :data:`MIN_COVERAGE` are covered and the anchors are a grid of sizes and ratios
    (``"suggestion"``: ``anchor_sizes``, ``aspect_ratios`` and the share they cover, or None).
    None for a model without anchors."""
    if model.anchor_iou_thresholds is None:
        return None
    boxes, labels = boxes_in_frame(annotations, frame)

    def anchors_for(sizes, ratios):
        return model.anchor_boxes(*frame, anchor_sizes=sizes, aspect_ratios=ratios)

    best = best_anchor_iou(boxes, model.anchor_boxes(*frame)) if len(boxes) else np.zeros(0)
    fg_iou, bg_iou = model.anchor_iou_thresholds
    report = anchor_coverage(best, labels, annotations.classes, fg_iou, bg_iou)
    report.update(fg_iou=fg_iou, covered_iou=bg_iou, suggestion=None)
    current = (getattr(model, "anchor_sizes", None), getattr(model, "aspect_ratios", None))
    if len(boxes) and report["covered"] < MIN_COVERAGE and None not in current:
        try:
            sizes, ratios, reached = suggest_anchors(boxes, anchors_for, current, fg_iou, bg_iou)
        except NotImplementedError:  # anchors that are not a grid of sizes and ratios
            return report
        if reached > report["covered"]:
            report["suggestion"] = {
                "anchor_sizes": sizes,
                "aspect_ratios": ratios,
                "covered": reached,
            }
    return report


def anchor_warning(report: dict) -> str | None:
    """One line when the anchors cover too few boxes (None when they are fine)."""
    if report["covered"] is None or report["covered"] >= MIN_COVERAGE:
        return None
    worst = sorted(
        (v["covered"], k) for k, v in report["per_class"].items() if v["covered"] is not None
    )[:3]
    classes = ", ".join(f"{name} {share:.0%}" for share, name in worst)
    line = (
        f"only {report['covered']:.1%} of the training boxes have an anchor overlapping them by "
        f"IoU >= {report['covered_iou']:g} (least covered: {classes})"
    )
    suggestion = report["suggestion"]
    if suggestion:
        sizes = str(suggestion["anchor_sizes"]).replace(" ", "")
        ratios = str(suggestion["aspect_ratios"]).replace(" ", "")
        line += (
            f"; --set model.anchor_sizes={sizes} --set model.aspect_ratios={ratios} covers "
            f"{suggestion['covered']:.1%}"
        )
    return line


def print_data_checks(model, annotations: Annotations, recipe, console) -> dict:
    """Before training: one warning line per problem of :mod:`kdetect.data.quality`, then how
    many training boxes the anchors cover (a warning below :data:`MIN_COVERAGE`). Returns the
    anchor report (None for a model without anchors)."""
    frame = tuple(recipe.model.image_size)
    quality = quality_report(
        annotations, frame, hash_images=len(annotations.records) <= MAX_HASHED_IMAGES
    )
    for line in quality_warnings(quality):
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False)
    report = anchor_report(model, annotations, frame)
    if report is None:
        return None
    if report["covered"] is not None:
        console.print(
            f"anchors: {report['covered']:.1%} of {report['boxes']} training boxes overlap an "
            f"anchor by IoU >= {report['covered_iou']:g} ({report['fg']:.1%} by "
            f">= {report['fg_iou']:g})",
            highlight=False,
        )
    warning = anchor_warning(report)
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    return report
