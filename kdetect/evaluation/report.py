"""Showing and saving metrics: a rich table, ``metrics.json`` and precision-recall PNGs.

Plots are drawn with Pillow (already a kdetect dependency), so no plotting library is needed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from kdetect.evaluation.coco import COCO_KEYS
from kdetect.plumbing.errors import KdetectError
from kdetect.plumbing.paths import write_text


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def metrics_tables(metrics: dict) -> list:
    """The rich tables of a metrics dict: per-class AP, then the summary."""
    coco = metrics["metric"] == "coco"
    per_class = Table(title=f"Per-class AP ({metrics['metric']})")
    per_class.add_column("class")
    per_class.add_column("AP" if coco else "AP@0.5", justify="right")
    counts = metrics.get("num_ground_truth", {})
    if counts:
        per_class.add_column("objects", justify="right")
    for name, ap in metrics["per_class"].items():
        row = [name, _fmt(ap)]
        if counts:
            row.append(str(counts.get(name, 0)))
        per_class.add_row(*row)

    summary = Table(title="Summary")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    keys = COCO_KEYS if coco else ("mAP",)
    for key in keys:
        summary.add_row(key, _fmt(metrics.get(key)))
    summary.add_row("images", str(metrics.get("num_images", "")))
    summary.add_row("detections", str(metrics.get("num_detections", "")))
    return [per_class, summary]


def print_metrics(metrics: dict, console=None) -> None:
    """Print the per-class and summary tables."""
    console = console or Console()
    for table in metrics_tables(metrics):
        console.print(table)


def write_metrics(metrics: dict, path: str | os.PathLike) -> Path:
    """Write ``metrics`` as indented JSON (undefined numbers are ``null``)."""
    path = Path(path)
    try:
        write_text(path, json.dumps(metrics, indent=2) + "\n")
    except OSError as exc:
        raise KdetectError(f"{path}: cannot write metrics ({exc})") from None
    return path


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"


def plot_pr_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    metrics: dict,
    out_dir: str | os.PathLike,
) -> list[Path]:
    """Draw one precision-recall curve per class as ``<out_dir>/pr_<class>.png``, and all of
    them together as ``<out_dir>/precision_recall.png``.

    ``curves`` maps a class name to ``(recall, precision)``; titles and the legend show the class
    AP from ``metrics["per_class"]``. Returns the per-class paths.
    """
    # Deferred: kdetect.drawing.plots imports matplotlib, which metric-only callers never need.
    from kdetect.drawing.plots import plot_pr_curve, plot_pr_curves_together

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KdetectError(f"{out_dir}: cannot create plots folder ({exc})") from None
    per_class = metrics.get("per_class", {})
    written = []
    for name, (recall, precision) in curves.items():
        stem = f"pr_{_safe_name(name)}"
        if out_dir / f"{stem}.png" in written:  # two class names that sanitise alike
            stem = f"{stem}_{len(written)}"
        title = f"{name}: AP {_fmt(per_class.get(name))} ({metrics['metric']})"
        written.append(plot_pr_curve(recall, precision, title, out_dir / f"{stem}.png"))
    if curves:
        mean = metrics.get("mAP", metrics.get("AP"))
        title = f"precision-recall per class (legend: AP); {metrics['metric']} {_fmt(mean)}"
        plot_pr_curves_together(curves, per_class, title, out_dir / "precision_recall.png")
    return written
