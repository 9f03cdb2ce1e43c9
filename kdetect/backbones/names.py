"""The names of kdetect's backbones and freeze points, in a module light enough for the recipe
schema (which must not import Keras) and the backbone builders to share."""

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
