"""The names of kdetect's backbones and freeze points, in a module light enough for the recipe
schema (which must not import Keras) and the backbone builders to share."""

BACKBONES = (
    "resnet50",
    "resnet101",
    "vgg16",
    "mobilenet_v2",
    "torchvision_resnet50",
    "torchvision_mobilenet_v3_large",
    "tiny",
)
FREEZE_STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")
