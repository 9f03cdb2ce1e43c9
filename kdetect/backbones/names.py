"""The names of kdetect's backbones and freeze points, the RPN levels each gives and the rule
for their anchor sizes, in a module light enough for the recipe schema (which must not import
Keras), the backbone builders and the detectors to share."""

BACKBONES = (
    "resnet50",
    "resnet101",
    "vgg16",
    "mobilenet_v2",
    "torchvision_resnet50",
    "torchvision_mobilenet_v3_large",
    "torchvision_mobilenet_v3_large_ssdlite",
    "torchvision_ssd_vgg16",
    "tiny",
)
FREEZE_STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")
#: Backbones built for one model type's layout (their feature maps are that head's).
BACKBONE_MODEL_TYPE = {
    "torchvision_ssd_vgg16": "ssd",
    "torchvision_mobilenet_v3_large_ssdlite": "ssdlite",
}

#: RPN levels of a backbone with a feature pyramid (its maps plus the pyramid's subsampled top):
#: C2..C5 + pool for most; torchvision's MobileNetV3 detector has two stride-32 maps + pool.
FPN_RPN_LEVELS = {"torchvision_mobilenet_v3_large": 3}
DEFAULT_FPN_RPN_LEVELS = 5


def rpn_levels(backbone: str, fpn: bool) -> int:
    """How many RPN levels (one list of ``anchor_sizes`` each) ``backbone`` gives."""
    return FPN_RPN_LEVELS.get(backbone, DEFAULT_FPN_RPN_LEVELS) if fpn else 1


#: Anchor sizes (pixels) per RPN level when none are given: one size per pyramid level, or all
#: five on the single C4 map.
DEFAULT_ANCHOR_SIZES = {
    True: ((32,), (64,), (128,), (256,), (512,)),
    False: ((32, 64, 128, 256, 512),),
}


def checked_anchor_sizes(anchor_sizes, fpn: bool, levels: int) -> tuple:
    """One tuple of float sizes per RPN level (the default when None), all of one length and
    none empty; else ``ValueError`` naming ``anchor_sizes``. Faster R-CNN and the recipe
    checks both apply this rule (a recipe's before anything is built).

    The default is one size per pyramid level; a pyramid with other than five levels
    (torchvision's MobileNetV3 detector has three) gets all five sizes on every level, as
    torchvision's builder gives it.
    """
    if anchor_sizes is None:
        anchor_sizes = DEFAULT_ANCHOR_SIZES[bool(fpn)]
        if len(anchor_sizes) != levels:
            anchor_sizes = DEFAULT_ANCHOR_SIZES[False] * levels
    anchor_sizes = tuple(tuple(float(s) for s in level) for level in anchor_sizes)
    if len(anchor_sizes) != levels:
        where = "with FPN" if fpn else "without FPN"
        raise ValueError(
            f"anchor_sizes: needs {levels} list(s), one per RPN level {where}, got "
            f"{len(anchor_sizes)}"
        )
    if not anchor_sizes[0] or any(len(level) != len(anchor_sizes[0]) for level in anchor_sizes):
        raise ValueError(
            "anchor_sizes: every RPN level needs the same number (at least one) of sizes, got "
            f"{[list(level) for level in anchor_sizes]}"
        )
    return anchor_sizes
