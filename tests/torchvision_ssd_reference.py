"""torchvision's side of the SSD / SSDlite parity tests; run by a Python that has torch.

Not a test module: ``tests/models/test_ssd_parity.py`` runs it through ``tests/torch_peer.py``.

    python torchvision_ssd_reference.py make ARCH OUT.pth --calibrate IMAGE.npy [...]
        A randomly initialised torchvision detector made non-trivial: batch-norm statistics (if
        any) calibrated on the given photos (uint8 HxWx3 .npy files) and affine parameters
        perturbed; class predictors scaled so that logits spread (softmax scores well above
        the score threshold), box predictors scaled so that deltas stay moderate. Saved with
        torch.save as the published checkpoints are laid out.

    python torchvision_ssd_reference.py run ARCH WEIGHTS.pth OUT.npz IMAGE.npy [...]
        model.eval() on each image alone: detections per image, plus the stages of the first
        (normalised resized input, feature maps, head outputs, default boxes).

    python torchvision_ssd_reference.py losses ARCH WEIGHTS.pth OUT.npz TARGETS.npz IMAGE.npy ...
        model.train() with batch norm in eval mode (so training numerics equal evaluation's)
        on the images as one batch, with boxes_i / labels_i (torchvision labels) of TARGETS.npz:
        the loss dict.

Several commands separated by a lone ``+`` run in one interpreter, in order (torch imported
once): ``make ARCH W.pth --calibrate A.npy + run ARCH W.pth R.npz A.npy + losses ...``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torchvision
from torch_side import add_model_command, load_images, reference_parser, run_chain

ARCHS = ("ssd300_vgg16", "ssdlite320_mobilenet_v3_large")


def build(arch: str, num_classes: int) -> torch.nn.Module:
    if arch not in ARCHS:
        raise SystemExit(f"unknown arch {arch}")
    builder = getattr(torchvision.models.detection, arch)
    return builder(weights=None, weights_backbone=None, num_classes=num_classes)


def head_outputs(model, images):
    batch, _ = model.transform(images)
    features = list(model.backbone(batch.tensors).values())
    return batch, features, model.head(features)


def make(args):
    torch.manual_seed(args.seed)
    model = build(args.arch, args.num_classes)
    images = load_images(args.calibrate)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average
    model.eval()
    for module in norms:
        module.train()
    with torch.no_grad():  # one batch: the smallest maps are 1x1
        head_outputs(model, images)
    model.eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(args.seed)
        for module in norms:
            module.weight.mul_(0.5 + torch.rand(module.weight.shape, generator=generator))
            module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=generator))
        # Scale the last layer of each predictor so that its outputs have the wanted spread.
        _, _, outputs = head_outputs(model, images[:1])
        for head, key, target in (
            (model.head.classification_head, "cls_logits", args.logit_std),
            (model.head.regression_head, "bbox_regression", args.delta_std),
        ):
            factor = target / float(outputs[key].std())
            for module in head.module_list:
                last = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)][-1]
                last.weight.mul_(factor)
                last.bias.normal_(0.0, 0.1 * target, generator=generator)
    torch.save(model.state_dict(), args.output)


def load(args):
    model = build(args.arch, args.num_classes)
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    return model.eval()


def run(args):
    model = load(args)
    out = {}
    images = load_images(args.images)
    with torch.no_grad():
        for i, image in enumerate(images):
            (det,) = model([image])
            out[f"boxes_{i}"] = det["boxes"].numpy()
            out[f"scores_{i}"] = det["scores"].numpy()
            out[f"labels_{i}"] = det["labels"].numpy()
        batch, features, heads = head_outputs(model, images[:1])
        out["input"] = batch.tensors.numpy()
        for level, feature in enumerate(features):
            out[f"feature_{level}"] = feature.numpy()
        out["cls_logits"] = heads["cls_logits"][0].numpy()
        out["bbox_regression"] = heads["bbox_regression"][0].numpy()
        out["anchors"] = model.anchor_generator(batch, features)[0].numpy()
    np.savez(args.output, **out)


def losses(args):
    model = load(args)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    images = load_images(args.images)
    given = np.load(args.targets)
    targets = [
        {
            "boxes": torch.from_numpy(given[f"boxes_{i}"]).float(),
            "labels": torch.from_numpy(given[f"labels_{i}"]).long(),
        }
        for i in range(len(images))
    ]
    with torch.no_grad():
        found = model(images, targets)
    np.savez(args.output, **{k: v.numpy() for k, v in found.items()})


def main(argv=None):
    parser, sub = reference_parser()
    make_options = sub.choices["make"]
    make_options.add_argument("--logit-std", type=float, default=2.5)
    make_options.add_argument("--delta-std", type=float, default=1.0)
    add_model_command(sub, "run", "images")
    add_model_command(sub, "losses", "targets", nargs=None).add_argument("images", nargs="+")
    run_chain(parser, {"make": make, "run": run, "losses": losses}, argv)


if __name__ == "__main__":
    sys.exit(main())
