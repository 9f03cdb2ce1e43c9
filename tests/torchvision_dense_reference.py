"""torchvision's side of the dense-detector parity tests (RetinaNet, FCOS); needs torch.

Not a test module: ``tests/models/test_dense_parity.py`` runs it through ``tests/torch_peer.py``.

    python torchvision_dense_reference.py make ARCH OUT.pth --calibrate IMAGE.npy [...]
        A random torchvision detector made non-trivial: batch norm calibrated on the images,
        head towers scaled so that their outputs depend on the image, eight active classes
        (labels 1..8) whose logit bias is set so that a few hundred (anchor, class) pairs per
        calibration image pass the score threshold; label 0 and labels 9.. can never score (bias
        -100 / -20, weight 0). Saved as the published files are laid out (v1: frozen batch norm
        with eps 0; --legacy-names: v1's pre-0.13 key names, as its COCO_V1 file has them).

    python torchvision_dense_reference.py run ARCH WEIGHTS OUT.npz IMAGE.npy [...]
        model.eval() detections of each image alone, and the stages of the first one.

    python torchvision_dense_reference.py losses ARCH WEIGHTS OUT.npz IMAGE.npy BOXES.npy [...]
        The training-mode loss dict of one batch of the images with their targets (BOXES.npy:
        [M, 5] x1, y1, x2, y2, torchvision label), batch norm in eval mode; also the batch the
        transform made (normalised, padded) and its resized boxes.

``--min-size`` / ``--max-size`` change the transform's resize (for ``make``: the calibration's):
the same rules and code at fewer pixels. Several commands separated by a lone ``+`` run in one
interpreter, in order (torch imported once): ``make ARCH W.pth --calibrate A.npy + run ... +
losses ...``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torchvision
from torch_side import add_model_command, load_images, reference_parser, run_chain
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

ARCHS = ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn")
ACTIVE = 8  # labels 1..ACTIVE can score


def build(arch: str, num_classes: int, frozen: bool) -> torch.nn.Module:
    """``arch`` with random weights; ``frozen``: the batch norm its COCO file is loaded with."""
    if arch not in ARCHS:
        raise SystemExit(f"unknown arch {arch}")
    if arch == "retinanet_resnet50_fpn_v2":  # plain batch norm, used in eval mode
        return torchvision.models.detection.retinanet_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=num_classes
        )
    norm = FrozenBatchNorm2d if frozen else torch.nn.BatchNorm2d
    body = torchvision.models.resnet50(weights=None, norm_layer=norm)
    backbone = _resnet_fpn_extractor(
        body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
    )
    model = (FCOS if arch.startswith("fcos") else RetinaNet)(backbone, num_classes)
    if frozen and arch == "retinanet_resnet50_fpn":
        overwrite_eps(model, 0.0)  # as torchvision loads the COCO_V1 file
    return model


def tower_outputs(model, image):
    """The head towers' outputs of one image in eval mode, level by level: what the last
    convolutions (the only head layers that ``make`` changes after these) read."""
    batch, _ = model.transform([image])
    features = list(model.backbone(batch.tensors).values())
    head = model.head
    return {
        "cls": [head.classification_head.conv(f) for f in features],
        "reg": [head.regression_head.conv(f) for f in features],
    }


def last_conv(conv, towers, width):
    """[rows, width] outputs of ``conv`` on every level of ``towers``, rows in the head's order
    (location, then anchor)."""
    return torch.cat([conv(t).permute(0, 2, 3, 1).reshape(-1, width) for t in towers])


def head_from_towers(model, arch, towers):
    """The head's outputs (one image, no batch axis) from its towers' outputs."""
    head, classes = model.head, model.head.classification_head.num_classes
    out = {
        "cls_logits": last_conv(head.classification_head.cls_logits, towers["cls"], classes),
        "bbox_regression": last_conv(head.regression_head.bbox_reg, towers["reg"], 4),
    }
    if arch.startswith("fcos"):
        out["bbox_regression"] = torch.relu(out["bbox_regression"])
        out["bbox_ctrness"] = last_conv(head.regression_head.bbox_ctrness, towers["reg"], 1)
    return {k: v[None] for k, v in out.items()}


def scores_of(arch, outputs, shift):
    """Detection scores of the active classes with ``shift`` added to their logits."""
    logits = outputs["cls_logits"][0, :, 1 : ACTIVE + 1] + shift
    if arch.startswith("fcos"):
        return torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(outputs["bbox_ctrness"][0]))
    return torch.sigmoid(logits)


def resize(model, args):
    """``model`` with its transform's resize set by ``--min-size`` / ``--max-size``."""
    if args.min_size is not None:
        model.transform.min_size = (args.min_size,)
    if args.max_size is not None:
        model.transform.max_size = args.max_size
    return model


def make(args):
    torch.manual_seed(args.seed)
    model = resize(build(args.arch, args.num_classes, frozen=False), args)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    model.eval()
    for module in norms:
        module.train()
    images = load_images(args.calibrate)
    with torch.no_grad():  # batch norm is in the body only
        for image in images:
            model.backbone.body(model.transform([image])[0].tensors)
    model.eval()
    head = model.head
    towers = (head.classification_head.conv, head.regression_head.conv)
    thresh = model.score_thresh
    with torch.no_grad():
        generator = torch.Generator().manual_seed(args.seed)
        for module in norms:
            module.weight.mul_(0.5 + torch.rand(module.weight.shape, generator=generator))
            module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=generator))
        for tower in towers:  # He-scaled tower convs, so that the head sees the image
            for conv in tower.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    fan_in = conv.weight[0].numel()
                    conv.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
        anchors = head.classification_head.num_anchors
        cls = head.classification_head.cls_logits
        weight = cls.weight.view(anchors, args.num_classes, -1)
        bias = cls.bias.view(anchors, args.num_classes)
        weight[:, 0] = 0.0
        bias[:, 0] = -100.0  # label 0: never a detection, no loss
        weight[:, ACTIVE + 1 :] = 0.0
        bias[:, ACTIVE + 1 :] = -20.0

        # Nothing before the head's last convolutions changes from here on.
        towers = [tower_outputs(model, image) for image in images]

        def pooled(key):
            return torch.cat([head_from_towers(model, args.arch, t)[key][0] for t in towers])

        spread = pooled("cls_logits")[:, 1 : ACTIVE + 1].std()
        weight[:, 1 : ACTIVE + 1] *= args.logit_std / spread
        bias[:, 1 : ACTIVE + 1] = 0.0
        regression = head.regression_head
        if args.arch.startswith("fcos"):  # side distances of one to a few location sizes
            regression.bbox_reg.bias.fill_(1.5)
            regression.bbox_ctrness.weight.mul_(args.logit_std / pooled("bbox_ctrness").std())
        regression.bbox_reg.weight.mul_(args.delta_std / pooled("bbox_regression").std())
        # The class bias: the median over the images of the one that lets about
        # args.candidates (anchor, class) pairs of an image pass the score threshold.
        biases = []
        for tower in towers:
            outputs = head_from_towers(model, args.arch, tower)
            low, high = -30.0, 30.0
            for _ in range(50):
                mid = 0.5 * (low + high)
                count = int((scores_of(args.arch, outputs, mid) > thresh).sum())
                low, high = (mid, high) if count < args.candidates else (low, mid)
            biases.append(0.5 * (low + high))
        bias[:, 1 : ACTIVE + 1] = float(np.median(biases))
    state = model.state_dict()
    if args.arch != "retinanet_resnet50_fpn_v2":  # published layout: frozen batch norm
        frozen = build(args.arch, args.num_classes, frozen=True)
        frozen.load_state_dict({k: v for k, v in state.items() if "num_batches" not in k})
        state = frozen.state_dict()
    if args.legacy_names:
        state = legacy_names(state)
    torch.save(state, args.output)


def legacy_names(state):
    """The pre-0.13 key names of RetinaNet v1's COCO file (head towers: conv.{2i}; pyramid:
    inner_blocks.{i} / layer_blocks.{i}), as a plain dict, which torchvision renames on load."""
    out = {}
    for key, value in state.items():
        for tower in ("head.classification_head.conv.", "head.regression_head.conv."):
            for i in range(4):
                key = key.replace(f"{tower}{i}.0.", f"{tower}{2 * i}.")
        for blocks in ("inner_blocks", "layer_blocks"):
            for i in range(3):
                key = key.replace(f"backbone.fpn.{blocks}.{i}.0.", f"backbone.fpn.{blocks}.{i}.")
        out[key] = value
    return out


def load(args):
    model = build(args.arch, args.num_classes, frozen=True)
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    return resize(model, args)


def run(args):
    model = load(args)
    model.eval()
    out = {}
    images = load_images(args.images)
    with torch.no_grad():
        for i, image in enumerate(images):
            (det,) = model([image])
            out[f"boxes_{i}"] = det["boxes"].numpy()
            out[f"scores_{i}"] = det["scores"].numpy()
            out[f"labels_{i}"] = det["labels"].numpy()
        batch, _ = model.transform([images[0]])
        out["input"] = batch.tensors.numpy()
        out["image_size"] = np.array(batch.image_sizes[0])
        body = model.backbone.body(batch.tensors)
        for k, v in body.items():
            out[f"body_{k}"] = v.numpy()
        features = list(model.backbone.fpn(body).values())
        outputs = model.head(features)
        for i, v in enumerate(features):
            out[f"fpn_{i}"] = v.numpy()
        for k, v in outputs.items():
            out[f"head_{k}"] = v[0].numpy()
        out["anchors"] = model.anchor_generator(batch, features)[0].numpy()
    np.savez(args.output, **out)


def losses(args):
    model = load(args)
    model.train()
    for module in model.modules():  # batch norm as in eval: train mode computes the same
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    images = load_images(args.pairs[0::2])
    targets = []
    for path in args.pairs[1::2]:
        rows = torch.from_numpy(np.load(path)).float()
        targets.append({"boxes": rows[:, :4], "labels": rows[:, 4].long()})
    out = {}
    with torch.no_grad():
        batch, resized = model.transform(images, [dict(t) for t in targets])
        out["input"] = batch.tensors.numpy()
        for i, target in enumerate(resized):
            out[f"boxes_{i}"] = target["boxes"].numpy()
        for name, value in model(images, targets).items():
            out[f"loss_{name}"] = value.numpy()
    np.savez(args.output, **out)


def main(argv=None):
    parser, sub = reference_parser()
    make_options = sub.choices["make"]
    make_options.add_argument("--legacy-names", action="store_true")
    make_options.add_argument("--logit-std", type=float, default=1.5)
    make_options.add_argument("--delta-std", type=float, default=0.2)
    make_options.add_argument("--candidates", type=int, default=250)
    parsers = [make_options]
    for command, inputs in (("run", "images"), ("losses", "pairs")):
        parsers.append(add_model_command(sub, command, inputs))
    for p in parsers:
        p.add_argument("--min-size", type=int)
        p.add_argument("--max-size", type=int)
    run_chain(parser, {"make": make, "run": run, "losses": losses}, argv)


if __name__ == "__main__":
    sys.exit(main())
