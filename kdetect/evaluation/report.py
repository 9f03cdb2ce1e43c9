"""Showing and saving metrics: a rich table, ``metrics.json`` and precision-recall PNGs.

Plots are drawn with Pillow (already a kdetect dependency), so no plotting library is needed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from kdetect.errors import KdetectError
from kdetect.evaluation.coco import COCO_KEYS
from kdetect.paths import write_text


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
    size: tuple[int, int] = (480, 400),
) -> list[Path]:
    """Draw one precision-recall curve per class as ``<out_dir>/pr_<class>.png``.

    ``curves`` maps a class name to ``(recall, precision)``; the title shows the class AP from
    ``metrics["per_class"]``. Returns the written paths.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KdetectError(f"{out_dir}: cannot create plots folder ({exc})") from None
    width, height = size
    left, right, top, bottom = 50, 20, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(r: float, p: float) -> tuple[float, float]:
        return left + r * plot_w, top + (1.0 - p) * plot_h

    written = []
    for name, (recall, precision) in curves.items():
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        for k in range(11):  # grid and tick labels every 0.1
            t = k / 10
            gx, _ = xy(t, 0)
            _, gy = xy(0, t)
            draw.line([(gx, top), (gx, top + plot_h)], fill=(230, 230, 230))
            draw.line([(left, gy), (left + plot_w, gy)], fill=(230, 230, 230))
            if k % 2 == 0:
                draw.text((gx - 8, top + plot_h + 4), f"{t:.1f}", fill="black")
                draw.text((left - 28, gy - 6), f"{t:.1f}", fill="black")
        draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
        recall = np.asarray(recall, dtype=np.float64)
        precision = np.asarray(precision, dtype=np.float64)
        if len(recall):
            points = [xy(0.0, float(precision[0]))] + [
                xy(float(r), float(p)) for r, p in zip(recall, precision, strict=True)
            ]
            draw.line(points, fill=(31, 119, 180), width=2)
        ap = metrics.get("per_class", {}).get(name)
        draw.text((left + 80, 8), f"{name}  AP={_fmt(ap)} ({metrics['metric']})", fill="black")
        draw.text((left + plot_w // 2 - 15, height - 18), "recall", fill="black")
        draw.text((4, top - 20), "precision", fill="black")
        stem = f"pr_{_safe_name(name)}"
        if out_dir / f"{stem}.png" in written:  # two class names that sanitise alike
            stem = f"{stem}_{len(written)}"
        path = out_dir / f"{stem}.png"
        image.save(path)
        written.append(path)
    return written
