"""The ``imported_*`` configurations: one torchvision checkpoint, run by both frameworks.

torch writes the checkpoint with the ``make`` command of the architecture's parity reference
(``tests/torchvision_reference.py`` for Faster R-CNN, ``torchvision_dense_reference.py`` for
RetinaNet and FCOS, ``torchvision_ssd_reference.py`` for SSD and SSDlite: random weights, batch
norm calibrated on the benchmark's first photos, scores spread so that thresholds and NMS have
work, laid out as the published COCO file is), kdetect imports it with the model class's
``from_torchvision`` and the torchvision peer loads the same file (``peer_torchvision.py
--weights --inputs --arch``). Both run the same photos: inference on the raw images (each
framework resizes with its own rule: ``min_max``, short side 800, long side <= 1333, the batch
padded to 32; ``fixed``, stretched to SSD's 300x300 or SSDlite's 320x320), and a training step
on the same images and boxes, which kdetect receives already at the frame torchvision's
transform makes of them (``train_batch``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from common import random_boxes

from kdetect.models.registry import architecture_options, architecture_type, model_class

ROOT = Path(__file__).resolve().parents[1]
# The parity reference that writes each model type's checkpoints (its ``make`` command).
REFERENCES = {
    "faster_rcnn": ROOT / "tests" / "torchvision_reference.py",
    "retinanet": ROOT / "tests" / "torchvision_dense_reference.py",
    "fcos": ROOT / "tests" / "torchvision_dense_reference.py",
    "ssd": ROOT / "tests" / "torchvision_ssd_reference.py",
    "ssdlite": ROOT / "tests" / "torchvision_ssd_reference.py",
}
# Batch norm is calibrated on this many photos (SSDlite's 1x1 maps need a batch of two).
CALIBRATION_IMAGES = 2
PHOTOS = ROOT.parent / "shared" / "data" / "raccoon" / "JPEGImages"


def photos(count: int, size: tuple[int, int], folder: Path = PHOTOS) -> tuple[np.ndarray, str]:
    """``count`` photos of ``folder`` (sorted by name) resized to ``size`` (height, width):
    uint8 ``[count, H, W, 3]`` and a description; random uint8 when the folder is absent."""
    height, width = size
    files = sorted(folder.glob("*.jpg"))[:count] if folder.is_dir() else []
    if len(files) < count:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8), "random uint8"
    from PIL import Image

    images = [
        np.asarray(Image.open(f).convert("RGB").resize((width, height), Image.BILINEAR))
        for f in files
    ]
    return np.stack(images), f"{folder.parent.name} photos resized to {height}x{width}"


def _transform(arch: str):
    """``arch``'s image transform (kdetect's own rule, which reproduces torchvision's)."""
    from kdetect.models.transform import ImageTransform

    options = architecture_options(arch)
    sizes = {key: options[key] for key in ("min_size", "max_size") if key in options}
    return ImageTransform(options["image_size"], options["resize_mode"], **sizes)


def min_max_size(arch: str, size: tuple[int, int]) -> tuple[int, int]:
    """The size ``arch``'s resize gives an image of ``size`` (``min_max``; ``fixed``: the
    architecture's own size, whatever the image's)."""
    height, width = _transform(arch).resized_size(*size)
    return int(height), int(width)


def train_frame(arch: str, size: tuple[int, int]) -> tuple[int, int]:
    """The padded frame torchvision's transform makes of images of ``size`` (multiples of 32;
    ``fixed``: the resized size itself)."""
    transform = _transform(arch)
    return tuple(int(side) for side in transform.frame_size(*min_max_size(arch, size)))


def write_inputs(folder: Path, images: np.ndarray, train_batch: int, seed: int = 0) -> Path:
    """``inputs.npz`` for both sides: ``images``, and ``boxes`` / ``labels`` (kdetect's
    numbering) for the first ``train_batch`` images, in pixels of the raw images."""
    boxes, labels = random_boxes(np.random.default_rng(seed), train_batch, images.shape[1:3])
    path = Path(folder) / "inputs.npz"
    np.savez(path, images=images, boxes=boxes, labels=labels)
    return path


def write_checkpoint(python: str, arch: str, folder: Path, images: np.ndarray) -> Path:
    """Have torch (``python``) write a non-trivial ``arch`` checkpoint into ``folder``, its batch
    norm calibrated on the first ``CALIBRATION_IMAGES`` of ``images``."""
    folder = Path(folder)
    calibrate = []
    for i, image in enumerate(images[:CALIBRATION_IMAGES]):
        calibrate.append(str(folder / f"calibrate_{i}.npy"))
        np.save(calibrate[-1], image)
    path = folder / f"{arch}.pth"
    reference = REFERENCES[architecture_type(arch)]
    argv = [python, str(reference), "make", arch, str(path), "--calibrate", *calibrate]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{reference.name} make failed:\n{done.stderr[-3000:]}")
    return path


def train_batch(model, images: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> dict:
    """kdetect's batch for torchvision's training transform of the same images and boxes.

    Each image is resized (bilinear, as torchvision) by the model's ``min_max`` rule, its boxes
    scaled by the same per-axis ratios torchvision's ``resize_boxes`` uses, and padded bottom and
    right to ``model.image_size`` with the mean pixel, which normalises to the zeros torchvision
    pads with.
    """
    import tensorflow as tf

    from kdetect.backbones.networks import IMAGENET_MEAN_RGB

    height, width = images.shape[1:3]
    new_h, new_w = (int(s) for s in model.transform.resized_size(height, width))
    frame_h, frame_w = model.image_size
    if new_h > frame_h or new_w > frame_w:
        raise ValueError(f"{height}x{width} resizes to {new_h}x{new_w}, past the frame")
    resized = tf.image.resize(images.astype("float32"), (new_h, new_w), method="bilinear")
    frame = np.empty((len(images), frame_h, frame_w, 3), "float32")
    frame[...] = np.asarray(IMAGENET_MEAN_RGB, "float32") * 255.0
    frame[:, :new_h, :new_w] = resized.numpy()
    ratios = np.array([new_w / width, new_h / height] * 2, "float32")
    bounding_boxes = {"boxes": boxes * ratios, "labels": labels}
    return {"images": frame, "bounding_boxes": bounding_boxes}


def prepare(config: dict, train_batch_size: int, images_count: int, python: str, folder: Path):
    """Write the checkpoint and the inputs into ``folder``; import the checkpoint.

    Returns the kdetect model (trained at ``train_frame``), its training batch, the raw images
    (float32), the options that make the peer run the same file on the same inputs, and a
    description of the images.
    """
    arch, size = config["imported"], tuple(config["input_size"])
    images, source = photos(max(images_count, train_batch_size), size)
    inputs = write_inputs(folder, images, train_batch_size)
    model, weights = import_checkpoint(python, arch, folder, images, size)
    with np.load(inputs) as data:
        batch = train_batch(model, images[:train_batch_size], data["boxes"], data["labels"])
    peer = {"weights": str(weights), "inputs": str(inputs), "arch": arch}
    peer["num_classes"] = model.num_classes + 1  # torchvision's label 0 beside kdetect's
    return model, batch, images.astype("float32"), peer, source


def import_checkpoint(python: str, arch: str, folder: Path, images: np.ndarray, size):
    """kdetect's ``arch`` holding the checkpoint torch writes into ``folder`` (its batch norm
    calibrated on the first ``images``), with the training frame of images of ``size``; and
    the checkpoint's path."""
    weights = write_checkpoint(python, arch, folder, images)
    cls = model_class(architecture_type(arch))
    return cls.from_torchvision(weights, arch=arch, image_size=train_frame(arch, size)), weights
