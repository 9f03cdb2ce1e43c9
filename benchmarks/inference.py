"""Inference latency of FasterRCNN (median seconds per batch), optionally beside torchvision.

    python benchmarks/inference.py [--configs tiny resnet50_fpn] [--batch-size 1] [--repeats 5]
                                   [--peer-python /path/to/python-with-torchvision]

ResNet50-FPN runs at 600x1000 inputs (network frame 608x1024) with 1000 proposals, as
torchvision's ``fasterrcnn_resnet50_fpn(min_size=600, max_size=1000)`` does; the peer column
appears when torch/torchvision are importable here or ``--peer-python`` names an interpreter
that has them.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import CONFIGS, Peer, build_model, machine, print_table, side_by_side


def run(configs, batch_size: int, repeats: int, peer_python: str | None) -> list[list]:
    rows = []
    peer = Peer.start(peer_python) if "resnet50_fpn" in configs else None
    for name in configs:
        model = build_model(name)
        height, width = CONFIGS[name]["input_size"]
        images = (
            np.random.default_rng(0)
            .uniform(0, 255, (batch_size, height, width, 3))
            .astype("float32")
        )
        seconds, theirs, ratio = side_by_side(
            lambda m=model, x=images: m.predict_on_batch(x),
            peer if name == "resnet50_fpn" else None,
            "inference",
            batch_size,
            repeats,
        )
        rows.append(
            [
                name,
                batch_size,
                f"{height}x{width}",
                seconds,
                batch_size / seconds,
                theirs or "-",
                f"{ratio:.2f}x" if ratio else "-",
            ]
        )
    if peer:
        peer.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="FasterRCNN inference benchmark")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer-python", default=None)
    args = parser.parse_args()
    rows = run(args.configs, args.batch_size, args.repeats, args.peer_python)
    print_table(
        f"inference (median s/batch) · {machine()}",
        [
            "config",
            "batch",
            "input",
            "kdetect s",
            "images/s",
            "torchvision s",
            "ratio (median of pairs)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
