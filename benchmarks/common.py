"""Shared pieces of the benchmarks: model configurations, timing and table printing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

# The configurations the issues name. ``input_size`` is the raw image fed to ``predict``;
# ``image_size`` the network frame (multiples of 32; torchvision pads 600x1000 to 608x1024 too).
CONFIGS = {
    "tiny": dict(
        model=dict(
            backbone="tiny",
            fpn=True,
            image_size=(128, 128),
            fpn_channels=64,
            anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
            box_head_units=256,
            rpn_pre_nms_top_n_train=300,
            rpn_post_nms_top_n_train=150,
            rpn_pre_nms_top_n_test=200,
            rpn_post_nms_top_n_test=100,
            box_batch_size_per_image=64,
        ),
        input_size=(128, 128),
    ),
    "resnet50_fpn": dict(
        model=dict(backbone="resnet50", fpn=True, image_size=(608, 1024)),
        input_size=(600, 1000),
    ),
    # torchvision's default size (min_size=800, max_size=1333), for GPU runs.
    "resnet50_fpn_800": dict(
        model=dict(backbone="resnet50", fpn=True, image_size=(800, 1344)),
        input_size=(800, 1333),
    ),
}


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_batch(batch_size: int, size: tuple[int, int], num_boxes: int = 5, seed: int = 0):
    """Random images and boxes in kdetect's batch format (NumPy)."""
    rng = np.random.default_rng(seed)
    height, width = size
    images = rng.uniform(0, 255, (batch_size, height, width, 3)).astype("float32")
    xy = rng.uniform(0, 0.6, (batch_size, num_boxes, 2)) * [width, height]
    wh = rng.uniform(0.1, 0.35, (batch_size, num_boxes, 2)) * [width, height]
    boxes = np.concatenate([xy, xy + wh], axis=-1).astype("float32")
    labels = rng.integers(0, 3, (batch_size, num_boxes)).astype("int32")
    return {"images": images, "bounding_boxes": {"boxes": boxes, "labels": labels}}


def machine() -> str:
    """One line describing where the numbers were measured."""
    return (
        f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs"
    )


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    """Print a small aligned table (rich when available)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(title)
        print(" | ".join(header))
        for row in rows:
            print(" | ".join(str(c) for c in row))
        return
    table = Table(title=title)
    for name in header:
        table.add_column(name)
    for row in rows:
        table.add_row(*(f"{c:.4f}" if isinstance(c, float) else str(c) for c in row))
    import sys

    Console(width=None if sys.stdout.isatty() else 200).print(table)


def peer_seconds(mode: str, repeats: int, batch_size: int, peer_python: str | None) -> float | None:
    """torchvision's median time for the same work, or None when torch is not available.

    Uses torch in this process when importable, else the interpreter ``peer_python``.
    """
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("peer_torchvision.py")
    if importlib.util.find_spec("torch") and importlib.util.find_spec("torchvision"):
        sys.path.insert(0, str(script.parent))
        from peer_torchvision import measure

        return measure(mode, repeats, batch_size)
    if not peer_python:
        return None
    out = subprocess.run(
        [
            peer_python,
            str(script),
            "--mode",
            mode,
            "--repeats",
            str(repeats),
            "--batch-size",
            str(batch_size),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def build_model(name: str, **overrides):
    """A randomly initialised FasterRCNN of configuration ``name`` (3 classes)."""
    from kdetect import FasterRCNN

    return FasterRCNN(num_classes=3, **{**CONFIGS[name]["model"], **overrides})
