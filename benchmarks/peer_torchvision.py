"""torchvision's detectors timed on the same work as kdetect's benchmarks.

Run with an interpreter that has torch and torchvision (kdetect does not depend on them)::

    python benchmarks/peer_torchvision.py --mode inference --repeats 5   # one JSON line
    python benchmarks/peer_torchvision.py --serve                        # stepped by kdetect
    python benchmarks/peer_torchvision.py --serve --weights W.pth --inputs INPUTS.npz \
        [--arch retinanet_resnet50_fpn] [--num-classes 91]

``--serve`` keeps the models resident and runs one timed step per command read from stdin
(``step MODE BATCH``; the first command for a mode/batch also builds it and runs a warm-up), and
answers with one JSON line ``{"seconds": ...}``. kdetect's benchmarks use it to alternate kdetect
and torchvision steps, so both are measured under the same machine load (benchmarks/common.py).

Without ``--weights``: ``fasterrcnn_resnet50_fpn(weights=None, min_size=600, max_size=1000)``
(random weights, trainable batch norm) on random 600x1000 images. With ``--weights`` (a
torchvision state dict of ``--arch``, default ``fasterrcnn_resnet50_fpn``, with
``--num-classes`` logits, as the parity references' ``make`` writes it) and ``--inputs`` (an .npz
of ``images`` uint8 [N, H, W, 3], ``boxes`` [B, K, 4] xyxy pixels of those images and
``labels`` [B, K] in kdetect's numbering, torchvision's minus 1; benchmarks/imported.py writes
it): the detector as the parity reference of ``--arch`` loads the file (tests/
torchvision_reference.py, torchvision_dense_reference.py, torchvision_ssd_reference.py: the
published model's set-up, e.g. frozen batch norm and ``min_size=800, max_size=1333`` for the
ResNet50 ones), with the backbone layers frozen that the published builder freezes
(``trainable_backbone_layers=3`` for the ResNet50 detectors), on the first BATCH images
(inference) or the first B images and their boxes (training).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1] / "tests"
DEFAULT_ARCH = "fasterrcnn_resnet50_fpn"


# The published builders' trainable backbone layers, where the parity reference builds the
# model without them (a builder called without weights trains every layer): the parameters of
# the backbone's body outside these stay fixed.
_TRAINABLE_BODY = {"retinanet_resnet50_fpn_v2": ("layer2.", "layer3.", "layer4.")}


def _checkpoint_model(weights: str, arch: str, num_classes: int):
    """torchvision's ``arch`` holding ``weights``, as its parity reference loads it."""
    sys.path.insert(0, str(_TESTS))
    import torchvision_dense_reference
    import torchvision_reference
    import torchvision_ssd_reference

    references = (torchvision_reference, torchvision_dense_reference, torchvision_ssd_reference)
    found = [reference for reference in references if arch in reference.ARCHS]
    if not found:
        raise ValueError(f"no parity reference builds {arch}")
    reference = found[0]
    options = dict(arch=arch, weights=weights, num_classes=num_classes)
    model = reference.load(argparse.Namespace(**options, min_size=None, max_size=None))
    if arch in _TRAINABLE_BODY:
        for name, parameter in model.backbone.body.named_parameters():
            parameter.requires_grad_(name.startswith(_TRAINABLE_BODY[arch]))
    return model


def _images_and_targets(mode: str, batch_size: int, inputs: str | None):
    import numpy as np
    import torch

    if inputs is None:
        images = [torch.rand(3, 600, 1000) for _ in range(batch_size)]
        return images, None
    data = np.load(inputs)
    count = batch_size if mode == "inference" else len(data["boxes"])
    if count > len(data["images"]):
        raise ValueError(f"{inputs} holds {len(data['images'])} images, not {count}")
    images = [torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in data["images"][:count]]
    targets = [
        {"boxes": torch.from_numpy(b).float(), "labels": torch.from_numpy(c).long() + 1}
        for b, c in zip(data["boxes"], data["labels"])
    ]
    return images, targets


def _random_targets(batch_size: int) -> list[dict]:
    import torch

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
    return targets


def make_step(
    mode: str,
    batch_size: int,
    threads: int | None = None,
    weights: str | None = None,
    inputs: str | None = None,
    arch: str = DEFAULT_ARCH,
    num_classes: int = 91,
) -> Callable[[], None]:
    """One ``mode`` ("inference" or "train") step on fixed inputs: a random-weight model, or
    the ``arch`` checkpoint ``weights`` on the images of ``inputs`` (see the module
    docstring)."""
    import torch
    import torchvision

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if weights is None:
        model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=600, max_size=1000
        )
    else:
        model = _checkpoint_model(weights, arch, num_classes)
    images, targets = _images_and_targets(mode, batch_size, inputs)
    if targets is not None and mode == "train" and len(targets) != batch_size:
        raise ValueError(f"{inputs} holds boxes for {len(targets)} images, not {batch_size}")
    if mode == "inference":
        model.eval()

        def step():
            with torch.no_grad():
                model(images)

        return step
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.001, momentum=0.9)
    if targets is None:
        targets = _random_targets(batch_size)

    def step():
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


class Steps:
    """Resident steps by (mode, batch size): each is built and warmed up on first use."""

    def __init__(self, threads: int | None = None, weights: str | None = None, **checkpoint):
        self.threads = threads
        self.options = {"weights": weights, **checkpoint} if weights else {}
        self._steps: dict[tuple[str, int], Callable[[], None]] = {}

    def run(self, mode: str, batch_size: int) -> float:
        """Seconds of one timed ``mode`` step at ``batch_size``."""
        key = (mode, batch_size)
        if key not in self._steps:
            self._steps[key] = make_step(mode, batch_size, self.threads, **self.options)
            self._steps[key]()
        start = time.perf_counter()
        self._steps[key]()
        return time.perf_counter() - start


def measure(
    mode: str, repeats: int, batch_size: int, threads: int | None = None, **options
) -> float:
    """Median seconds of ``repeats`` steps after one warm-up step (``options``: ``weights``,
    ``inputs``, ``arch`` and ``num_classes``, as for :class:`Steps`)."""
    steps = Steps(threads, **options)
    return statistics.median(steps.run(mode, batch_size) for _ in range(repeats))


def serve(stdin=sys.stdin, stdout=sys.stdout, weights=None, **checkpoint) -> None:
    """Answer ``step MODE BATCH`` lines with ``{"seconds": ...}`` until stdin closes
    (``checkpoint``: ``inputs``, ``arch`` and ``num_classes``, as for :class:`Steps`)."""
    steps = Steps(weights=weights, **checkpoint)
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
    parser.add_argument("--weights", help="a torchvision state dict of --arch")
    parser.add_argument("--inputs", help="with --weights: .npz of images, boxes and labels")
    parser.add_argument("--arch", default=DEFAULT_ARCH, help="with --weights: its builder")
    parser.add_argument("--num-classes", type=int, default=91, help="with --weights: logits")
    args = parser.parse_args()
    if bool(args.weights) != bool(args.inputs):
        parser.error("--weights and --inputs go together")
    checkpoint = dict(inputs=args.inputs, arch=args.arch, num_classes=args.num_classes)
    if args.serve:
        return serve(weights=args.weights, **checkpoint)
    if not args.mode:
        parser.error("--mode is required unless --serve")
    seconds = measure(
        args.mode,
        args.repeats,
        args.batch_size,
        args.threads,
        weights=args.weights,
        **checkpoint,
    )
    print(json.dumps({"mode": args.mode, "batch_size": args.batch_size, "seconds": seconds}))


if __name__ == "__main__":
    main()
