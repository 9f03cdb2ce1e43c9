"""torchvision's side of the checkpoint-import parity tests; run by a Python that has torch.

Not a test module: ``tests/models/test_pretrained_parity.py`` runs it through
``tests/torch_peer.py``.

    python torchvision_reference.py make ARCH OUT.pth [--legacy-names] [--num-classes N]
        A randomly initialised torchvision detector made non-trivial: batch-norm statistics
        calibrated on the images given with --calibrate (uint8 HxWx3 .npy files), classifier and
        objectness weights sharpened so that scores spread above the 0.05 threshold. Saved with
        torch.save as the published checkpoints are laid out (frozen batch norm with eps 0;
        --legacy-names uses the pre-0.13 module names, as the COCO_V1 file does).

    python torchvision_reference.py run ARCH WEIGHTS.pth OUT.npz IMAGE.npy [IMAGE.npy ...]
        model.eval() on each image alone: detections per image, plus every stage of the first
        image (normalised input, backbone and pyramid features, RPN outputs, anchors, proposals,
        pooled RoI features, class logits and box deltas).

    python torchvision_reference.py losses ARCH WEIGHTS.pth OUT.npz BOXES.npz IMAGE.npy [...]
        The training-mode loss dict of one batch of the images with the ground truth of
        BOXES.npz (``boxes_<i>`` xyxy pixels of image i, ``labels_<i>`` torchvision labels),
        batch norm kept at its statistics. The sampler and proposal settings given as options
        (e.g. samplers that keep every candidate, so that nothing is random) go to the
        detector's builder. Saved: each loss, the transformed batch (``input``,
        ``image_sizes``), the ground truth as the transform scaled it and each image's
        training-mode proposals (``proposals_<i>``). ``--min-size`` / ``--max-size`` change
        the transform's resize (the same code at fewer pixels).

    python torchvision_reference.py loss-functions IN.npz OUT.npz
        torch's smooth L1 and torchvision.ops' sigmoid focal and generalized-IoU losses,
        elementwise, of the inputs in IN.npz (``diff``, ``beta``; ``logits``, ``targets``,
        ``alpha``, ``gamma``; ``boxes1``, ``boxes2``).

Several commands separated by a lone ``+`` run in one interpreter, in order (torch imported
once): ``make ARCH W.pth --calibrate A.npy + run ARCH W.pth R.npz A.npy B.npy + losses ...``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torchvision
from torch_side import add_model_command, load_images, reference_parser, run_chain
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import FrozenBatchNorm2d

# Module names changed in torchvision 0.13; the COCO_V1 files use the old ones (torchvision
# renames them on load).
_NEW_TO_LEGACY = (
    ("rpn.head.conv.0.0.", "rpn.head.conv."),
    ("backbone.fpn.inner_blocks.{i}.0.", "backbone.fpn.inner_blocks.{i}."),
    ("backbone.fpn.layer_blocks.{i}.0.", "backbone.fpn.layer_blocks.{i}."),
)


ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
)


# Detector options the ``losses`` command passes on to the builder.
LOSS_OPTIONS = (
    "rpn_batch_size_per_image",
    "rpn_positive_fraction",
    "box_batch_size_per_image",
    "box_positive_fraction",
    "min_size",
    "max_size",
)


def build(arch: str, num_classes: int, frozen: bool, **options) -> torch.nn.Module:
    """The torchvision detector ``arch`` with random weights; ``frozen``: v1's batch norm as
    its COCO_V1 file has it (v2 keeps trainable batch norm either way); ``options`` go to
    ``FasterRCNN``."""
    if arch not in ARCHS:
        raise SystemExit(f"unknown arch {arch}")
    if arch != "fasterrcnn_resnet50_fpn":  # batch norm in eval mode equals a frozen one
        builder = getattr(torchvision.models.detection, arch)
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, **options)
    norm = FrozenBatchNorm2d if frozen else torch.nn.BatchNorm2d
    body = torchvision.models.resnet50(weights=None, norm_layer=norm)
    backbone = _resnet_fpn_extractor(body, 3 if frozen else 5)
    return FasterRCNN(backbone, num_classes=num_classes, **options)


def load(args, **options) -> torch.nn.Module:
    """The detector ``args.arch`` holding the checkpoint ``args.weights``, in eval mode."""
    model = build(args.arch, args.num_classes, frozen=True, **options)
    state = torch.load(args.weights, weights_only=True)
    model.load_state_dict(state)  # torchvision renames legacy keys itself
    if args.arch == "fasterrcnn_resnet50_fpn":
        overwrite_eps(model, 0.0)
    return model.eval()


def legacy_names(state):
    out = {}
    for key, value in state.items():
        for new, old in _NEW_TO_LEGACY:
            for i in range(4):
                key = key.replace(new.format(i=i), old.format(i=i))
        out[key] = value
    return out


def make(args):
    torch.manual_seed(args.seed)
    model = build(args.arch, args.num_classes, frozen=False)
    # Calibrate every batch norm on real images: cumulative batch statistics, each layer seeing
    # the normalised output of the ones before it (the rest of the model in eval mode).
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    model.eval()
    for module in norms:
        module.train()
    with torch.no_grad():
        for image in load_images(args.calibrate):
            model([image])
    model.eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(args.seed)
        for module in norms:  # non-trivial affine batch-norm parameters
            module.weight.mul_(0.5 + torch.rand(module.weight.shape, generator=generator))
            module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=generator))
        # Sharpen: spread objectness and class scores so that thresholds and NMS matter.
        # Objectness logits stay below ~12 so that sigmoid scores never saturate to equal 1.0
        # (ties that either framework may order either way); shrunken box deltas keep
        # proposals and detections of ordinary shapes, not sub-pixel slivers whose IoU is
        # ill-conditioned.
        model.rpn.head.cls_logits.weight.mul_(args.sharpen_rpn)
        model.rpn.head.bbox_pred.weight.mul_(args.shrink_rpn_box)
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.mul_(args.sharpen_cls)
        predictor.bbox_pred.weight.mul_(args.shrink_box)
    state = model.state_dict()
    if args.arch == "fasterrcnn_resnet50_fpn":  # saved as COCO_V1: frozen batch norm, eps 0
        frozen = build(args.arch, args.num_classes, frozen=True)
        frozen.load_state_dict({k: v for k, v in state.items() if "num_batches" not in k})
        overwrite_eps(frozen, 0.0)
        state = frozen.state_dict()
    if args.legacy_names:
        state = legacy_names(state)
    torch.save(state, args.output)


def run(args):
    model = load(args)
    out = {}
    images = load_images(args.images)
    # Every stage of the first image, as its forward pass computes them.
    stages = {
        "transform": model.transform,
        "body": model.backbone.body,
        "fpn": model.backbone.fpn,
        "rpn_head": model.rpn.head,
        "anchors": model.rpn.anchor_generator,
        "rpn": model.rpn,
        "pooled": model.roi_heads.box_roi_pool,
        "predictor": model.roi_heads.box_predictor,
    }
    seen = {}
    hooks = [
        module.register_forward_hook(
            lambda module, inputs, output, name=name: seen.setdefault(name, output)
        )
        for name, module in stages.items()
    ]
    with torch.no_grad():
        for i, image in enumerate(images):
            (det,) = model([image])
            out[f"boxes_{i}"] = det["boxes"].numpy()
            out[f"scores_{i}"] = det["scores"].numpy()
            out[f"labels_{i}"] = det["labels"].numpy()
            for hook in hooks if i == 0 else ():
                hook.remove()
        batch, _ = seen["transform"]
        out["input"] = batch.tensors.numpy()
        out["image_size"] = np.array(batch.image_sizes[0])
        for k, v in seen["body"].items():
            out[f"body_{k}"] = v.numpy()
        for k, v in seen["fpn"].items():
            out[f"fpn_{k}"] = v.numpy()
        flat_logits, flat_deltas = concat_box_prediction_layers(*seen["rpn_head"])
        out["rpn_logits"] = flat_logits.reshape(-1).numpy()
        out["rpn_deltas"] = flat_deltas.numpy()
        out["anchors"] = seen["anchors"][0].numpy()
        out["proposals"] = seen["rpn"][0][0].numpy()
        out["pooled"] = seen["pooled"].numpy()
        class_logits, box_regression = seen["predictor"]
        out["class_logits"] = class_logits.numpy()
        out["box_regression"] = box_regression.numpy()
    np.savez(args.output, **out)


def losses(args):
    options = {name: getattr(args, name) for name in LOSS_OPTIONS if getattr(args, name)}
    model = load(args, **options)
    # Training mode (proposal counts, ground truth among the RoIs, losses), but every batch
    # norm keeps normalising by its statistics, as a frozen one does.
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    images = load_images(args.images)
    truth = np.load(args.boxes)
    targets = [
        {
            "boxes": torch.from_numpy(truth[f"boxes_{i}"]).float(),
            "labels": torch.from_numpy(truth[f"labels_{i}"]).long(),
        }
        for i in range(len(images))
    ]
    out = {}
    with torch.no_grad():
        batch, scaled = model.transform(images, [dict(t) for t in targets])
        out["input"] = batch.tensors.numpy()
        out["image_sizes"] = np.array(batch.image_sizes)
        for i, target in enumerate(scaled):
            out[f"boxes_{i}"] = target["boxes"].numpy()
            out[f"labels_{i}"] = target["labels"].numpy()
        # The RPN's training-mode proposals, as the forward pass below makes them.
        seen = []
        hook = model.rpn.register_forward_hook(lambda module, inputs, output: seen.append(output))
        for name, value in model(images, targets).items():
            out[name] = np.float64(value.item())
        hook.remove()
        ((proposals, _),) = seen
        for i, boxes in enumerate(proposals):
            out[f"proposals_{i}"] = boxes.numpy()
    np.savez(args.output, **out)


def loss_functions(args):
    given = {k: torch.from_numpy(v) for k, v in np.load(args.inputs).items()}
    beta, alpha, gamma = (float(given[k]) for k in ("beta", "alpha", "gamma"))
    diff = given["diff"]
    out = {
        "smooth_l1": torch.nn.functional.smooth_l1_loss(
            diff, torch.zeros_like(diff), reduction="none", beta=beta
        ),
        "focal": torchvision.ops.sigmoid_focal_loss(
            given["logits"], given["targets"], alpha=alpha, gamma=gamma, reduction="none"
        ),
        "giou": torchvision.ops.generalized_box_iou_loss(
            given["boxes1"], given["boxes2"], reduction="none", eps=1e-7
        ),
    }
    np.savez(args.output, **{k: v.numpy() for k, v in out.items()})


def main(argv=None):
    parser, sub = reference_parser()
    make_options = sub.choices["make"]
    make_options.add_argument("--legacy-names", action="store_true")
    make_options.add_argument("--sharpen-rpn", type=float, default=2.0)
    make_options.add_argument("--shrink-rpn-box", type=float, default=0.2)
    make_options.add_argument("--sharpen-cls", type=float, default=2.0)
    make_options.add_argument("--shrink-box", type=float, default=0.2)
    add_model_command(sub, "run", "images")
    p = add_model_command(sub, "losses", "boxes", nargs=None)
    p.add_argument("images", nargs="+")
    for name in LOSS_OPTIONS:
        kind = float if name.endswith("fraction") else int
        p.add_argument("--" + name.replace("_", "-"), type=kind)
    p = sub.add_parser("loss-functions")
    p.add_argument("inputs")
    p.add_argument("output")
    commands = {"make": make, "run": run, "losses": losses, "loss-functions": loss_functions}
    run_chain(parser, commands, argv)


if __name__ == "__main__":
    sys.exit(main())
