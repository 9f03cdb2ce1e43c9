"""Shared pieces of the benchmarks: model configurations, timing and table printing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
_clock = time.perf_counter

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
    # torchvision's fasterrcnn_resnet50_fpn, written by torch (tests/torchvision_reference.py
    # make: random weights, calibrated batch norm, sharpened scores, frozen batch norm eps 0) and
    # imported with FasterRCNN.from_torchvision; torchvision runs the same file on the same
    # photos (benchmarks/imported.py). min_max resize: 480x640 -> 800x1066, frame 800x1088.
    "imported_resnet50_fpn": dict(imported="fasterrcnn_resnet50_fpn", input_size=(480, 640)),
    # The single-stage builders, the same way (their parity references write the checkpoints):
    # RetinaNet and FCOS resize as Faster R-CNN does, SSD / SSDlite stretch to 300 / 320 square.
    **{
        f"imported_{arch}": dict(imported=arch, input_size=(480, 640))
        for arch in (
            "retinanet_resnet50_fpn",
            "retinanet_resnet50_fpn_v2",
            "fcos_resnet50_fpn",
            "ssd300_vgg16",
            "ssdlite320_mobilenet_v3_large",
        )
    },
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
    boxes, labels = random_boxes(rng, batch_size, size, num_boxes)
    return {"images": images, "bounding_boxes": {"boxes": boxes, "labels": labels}}


def random_boxes(rng, batch_size: int, size: tuple[int, int], num_boxes: int = 5):
    """Random ``[B, N, 4]`` xyxy pixel boxes inside ``size`` and ``[B, N]`` labels in 0..2."""
    height, width = size
    xy = rng.uniform(0, 0.6, (batch_size, num_boxes, 2)) * [width, height]
    wh = rng.uniform(0.1, 0.35, (batch_size, num_boxes, 2)) * [width, height]
    boxes = np.concatenate([xy, xy + wh], axis=-1).astype("float32")
    labels = rng.integers(0, 3, (batch_size, num_boxes)).astype("int32")
    return boxes, labels


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


class Peer:
    """torchvision's steps, run on demand so they can alternate with kdetect's.

    Uses torch in this process when importable, else a resident ``peer_torchvision.py --serve``
    child started with the interpreter ``python`` (with ``retain_memory``, glibc set up as
    :func:`kdetect.plumbing.allocator.retain_freed_memory` does, through its environment variables).
    ``Peer.start`` returns None when neither is available. ``checkpoint``: ``weights`` and
    ``inputs``, a torchvision checkpoint and the .npz of images and boxes to run it on, and its
    ``arch`` and ``num_classes`` (peer_torchvision.py).
    """

    def __init__(self, python: str | None = None, retain_memory: bool = False, **checkpoint):
        import subprocess
        import sys

        self._process = None
        # libgomp's default (spin, then sleep) makes torch's threads wait out each other's time
        # slices when other processes share the cores: MobileNetV3-Large at 320 px took 2.2 s
        # instead of 0.044 s on the 2-core VM under load; passive waiting is what a shared
        # machine runs torch with.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if python is None:
            sys.path.insert(0, str(_HERE))
            from peer_torchvision import Steps

            self._local = Steps(**checkpoint)
            return
        options = [f"--{key.replace('_', '-')}={value}" for key, value in checkpoint.items()]
        env = dict(os.environ)
        if retain_memory:
            from kdetect.plumbing.allocator import RETAIN_FREED_MEMORY_ENV

            env.update(RETAIN_FREED_MEMORY_ENV)
        self._process = subprocess.Popen(
            [python, str(_HERE / "peer_torchvision.py"), "--serve", *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._read()  # {"ready": true}

    @classmethod
    def start(cls, peer_python: str | None, retain_memory: bool = False, **options) -> Peer | None:
        import importlib.util

        if importlib.util.find_spec("torch") and importlib.util.find_spec("torchvision"):
            return cls(**options)  # in this process: whatever this process's allocator does
        return cls(peer_python, retain_memory, **options) if peer_python else None

    def _read(self) -> dict:
        import json

        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the torchvision peer process exited (see its stderr above)")
        return json.loads(line)

    def step(self, mode: str, batch_size: int) -> float:
        """Seconds of one ``mode`` step at ``batch_size`` (built and warmed up on first use)."""
        if self._process is None:
            return self._local.run(mode, batch_size)
        self._process.stdin.write(f"step {mode} {batch_size}\n")
        self._process.stdin.flush()
        return self._read()["seconds"]

    def close(self) -> None:
        if self._process is not None:
            self._process.stdin.close()
            self._process.wait(timeout=60)
            self._process = None


def side_by_side(
    fn: Callable[[], object], peer: Peer | None, mode: str, batch_size: int, repeats: int
) -> tuple[float, float | None, float | None]:
    """Alternate ``fn()`` and the peer's step; medians of both and of the per-pair ratios.

    Each pair runs back to back, so a change in machine load (the VMs these run on are shared)
    moves both sides of a ratio together. One untimed warm-up of each side comes first. Without
    a peer: ``(median_seconds(fn, repeats), None, None)``.
    """
    if peer is None:
        return median_seconds(fn, repeats), None, None
    fn()
    peer.step(mode, batch_size)  # builds and warms up the peer's step, then one timed step
    ours, theirs = [], []
    for _ in range(repeats):
        start = _clock()
        fn()
        ours.append(_clock() - start)
        theirs.append(peer.step(mode, batch_size))
    ratios = [a / b for a, b in zip(ours, theirs)]
    return statistics.median(ours), statistics.median(theirs), statistics.median(ratios)


def build_model(name: str, **overrides):
    """A randomly initialised FasterRCNN of configuration ``name`` (3 classes)."""
    from kdetect import FasterRCNN

    return FasterRCNN(num_classes=3, **{**CONFIGS[name]["model"], **overrides})
