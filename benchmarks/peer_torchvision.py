"""torchvision's ``fasterrcnn_resnet50_fpn`` timed on the same work as kdetect's benchmarks.

Run with an interpreter that has torch and torchvision (kdetect does not depend on them)::

    python benchmarks/peer_torchvision.py --mode inference --repeats 5   # one JSON line
    python benchmarks/peer_torchvision.py --serve                        # stepped by kdetect

``--serve`` keeps the models resident and runs one timed step per command read from stdin
(``step MODE BATCH``; the first command for a mode/batch also builds it and runs a warm-up), and
answers with one JSON line ``{"seconds": ...}``. kdetect's benchmarks use it to alternate kdetect
and torchvision steps, so both are measured under the same machine load (benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable


def make_step(mode: str, batch_size: int, threads: int | None = None) -> Callable[[], None]:
    """One ``mode`` ("inference" or "train") step of a random-weight model on fixed inputs."""
    import torch
    import torchvision

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=600, max_size=1000
    )
    images = [torch.rand(3, 600, 1000) for _ in range(batch_size)]
    if mode == "inference":
        model.eval()

        def step():
            with torch.no_grad():
                model(images)

        return step
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch_size):
        xy = torch.rand(5, 2, generator=gen) * torch.tensor([600.0, 360.0])
        wh = torch.rand(5, 2, generator=gen) * torch.tensor([300.0, 200.0]) + 40
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], dim=1),
                "labels": torch.randint(1, 4, (5,), generator=gen),
            }
        )

    def step():
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


class Steps:
    """Resident steps by (mode, batch size): each is built and warmed up on first use."""

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self._steps: dict[tuple[str, int], Callable[[], None]] = {}

    def run(self, mode: str, batch_size: int) -> float:
        """Seconds of one timed ``mode`` step at ``batch_size``."""
        key = (mode, batch_size)
        if key not in self._steps:
            self._steps[key] = make_step(mode, batch_size, self.threads)
            self._steps[key]()
        start = time.perf_counter()
        self._steps[key]()
        return time.perf_counter() - start


def measure(mode: str, repeats: int, batch_size: int, threads: int | None = None) -> float:
    """Median seconds of ``repeats`` steps after one warm-up step."""
    steps = Steps(threads)
    return statistics.median(steps.run(mode, batch_size) for _ in range(repeats))


def serve(stdin=sys.stdin, stdout=sys.stdout) -> None:
    """Answer ``step MODE BATCH`` lines with ``{"seconds": ...}`` until stdin closes."""
    steps = Steps()
    print(json.dumps({"ready": True}), file=stdout, flush=True)
    for line in stdin:
        command, mode, batch = line.split()
        if command != "step":
            raise ValueError(f"unknown command {command!r}")
        print(json.dumps({"seconds": steps.run(mode, int(batch))}), file=stdout, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("inference", "train"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--serve", action="store_true", help="run steps on commands from stdin")
    args = parser.parse_args()
    if args.serve:
        return serve()
    if not args.mode:
        parser.error("--mode is required unless --serve")
    seconds = measure(args.mode, args.repeats, args.batch_size, args.threads)
    print(json.dumps({"mode": args.mode, "batch_size": args.batch_size, "seconds": seconds}))


if __name__ == "__main__":
    main()
