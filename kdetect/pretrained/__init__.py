"""Pretrained detectors: torchvision's COCO-trained Faster R-CNN checkpoints, imported into
kdetect's own model (``kdetect checkpoint import`` / ``FasterRCNN.from_torchvision``)."""
