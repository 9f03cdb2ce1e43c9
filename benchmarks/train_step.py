"""Training-step time of FasterRCNN (median seconds per step), optionally beside torchvision.

    python benchmarks/train_step.py [--configs tiny resnet50_fpn] [--batch-size 2] [--repeats 5]
                                    [--jit] [--peer-python /path/to/python-with-torchvision]

One step = forward, the four losses, backward and an SGD update, on a batch already resized
to the network frame (torchvision's step includes its own resize, which is cheap at this size).
"""

from __future__ import annotations

import argparse

import keras
from common import (
    CONFIGS,
    Peer,
    build_model,
    machine,
    print_table,
    random_batch,
    side_by_side,
)


def run(
    configs, batch_size: int, repeats: int, peer_python: str | None, jit: bool = False
) -> list[list]:
    rows = []
    peer = Peer.start(peer_python) if "resnet50_fpn" in configs else None
    for name in configs:
        model = build_model(name)
        model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), jit_compile=jit)
        batch = random_batch(batch_size, model.image_size)
        seconds, theirs, ratio = side_by_side(
            lambda m=model, b=batch: m.train_on_batch(b),
            peer if name == "resnet50_fpn" else None,
            "train",
            batch_size,
            repeats,
        )
        size = "x".join(str(s) for s in model.image_size)
        ratio_text = f"{ratio:.2f}x" if ratio else "-"
        rows.append(
            [name, batch_size, size, seconds, batch_size / seconds, theirs or "-", ratio_text]
        )
    if peer:
        peer.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="FasterRCNN training-step benchmark")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jit", action="store_true", help="compile the step with XLA")
    parser.add_argument("--peer-python", default=None)
    args = parser.parse_args()
    rows = run(args.configs, args.batch_size, args.repeats, args.peer_python, args.jit)
    print_table(
        f"training step (median s/step){' · XLA' if args.jit else ''} · {machine()}",
        [
            "config",
            "batch",
            "frame",
            "kdetect s",
            "images/s",
            "torchvision s",
            "ratio (median of pairs)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
