"""torchvision's ``fasterrcnn_resnet50_fpn`` timed on the same inputs as kdetect's benchmarks.

Run with an interpreter that has torch and torchvision (kdetect does not depend on them)::

    python benchmarks/peer_torchvision.py --mode inference --repeats 5

Prints one JSON line ``{"mode": ..., "seconds": median}``. The other benchmarks call it as a
subprocess (``--peer-python``) or import it when torch is importable in-process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def measure(mode: str, repeats: int, batch_size: int, threads: int | None = None) -> float:
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

    else:
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

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("inference", "train"), required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    seconds = measure(args.mode, args.repeats, args.batch_size, args.threads)
    print(json.dumps({"mode": args.mode, "batch_size": args.batch_size, "seconds": seconds}))


if __name__ == "__main__":
    main()
