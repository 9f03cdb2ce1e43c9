"""The ``imported_*`` configurations: one torchvision checkpoint, run by both frameworks.

torch writes the checkpoint (``tests/torchvision_reference.py make``: random weights, batch
norm calibrated on the benchmark's first photo, sharpened scores, frozen batch norm with eps 0,
as the published COCO file is laid out), kdetect imports it with
``FasterRCNN.from_torchvision`` and the torchvision peer loads the same file
(``peer_torchvision.py --weights --inputs``). Both run the same photos: inference on the raw
images (each framework resizes with its ``min_max`` rule: short side 800, long side <= 1333, the
batch padded to 32), and a training step on the same images and boxes, which kdetect receives
already at the frame torchvision's transform makes of them (``train_batch``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from common import random_boxes

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "torchvision_reference.py"
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


def min_max_size(arch: str, size: tuple[int, int]) -> tuple[int, int]:
    """The size ``arch``'s ``min_max`` resize gives an image of ``size`` (kdetect's own rule,
    :meth:`ImageTransform.resized_size`, which reproduces torchvision's)."""
    from kdetect.models.faster_rcnn.torchvision import ARCHITECTURES
    from kdetect.models.transform import ImageTransform

    options = ARCHITECTURES[arch]
    transform = ImageTransform(
        options["image_size"], "min_max", options["min_size"], options["max_size"]
    )
    height, width = transform.resized_size(*size)
    return int(height), int(width)


def train_frame(arch: str, size: tuple[int, int]) -> tuple[int, int]:
    """The padded frame torchvision's transform makes of images of ``size`` (multiples of 32)."""
    return tuple(-(-side // 32) * 32 for side in min_max_size(arch, size))


def write_inputs(folder: Path, images: np.ndarray, train_batch: int, seed: int = 0) -> Path:
    """``inputs.npz`` for both sides: ``images``, and ``boxes`` / ``labels`` (kdetect's
    numbering) for the first ``train_batch`` images, in pixels of the raw images."""
    boxes, labels = random_boxes(np.random.default_rng(seed), train_batch, images.shape[1:3])
    path = Path(folder) / "inputs.npz"
    np.savez(path, images=images, boxes=boxes, labels=labels)
    return path


def write_checkpoint(python: str, arch: str, folder: Path, images: np.ndarray) -> Path:
    """Have torch (``python``) write a non-trivial ``arch`` checkpoint into ``folder``."""
    folder = Path(folder)
    calibrate = folder / "calibrate.npy"
    np.save(calibrate, images[0])
    path = folder / f"{arch}.pth"
    argv = [python, str(REFERENCE), "make", arch, str(path), "--calibrate", str(calibrate)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{REFERENCE.name} make failed:\n{done.stderr[-3000:]}")
    return path


def train_batch(model, images: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> dict:
    """kdetect's batch for torchvision's training transform of the same images and boxes.

    Each image is resized (bilinear, as torchvision) by the model's ``min_max`` rule, its boxes
    scaled by the same per-axis ratios torchvision's ``resize_boxes`` uses, and padded bottom and
    right to ``model.image_size`` with the mean pixel, which normalises to the zeros torchvision
    pads with.
    """
    import tensorflow as tf

    from kdetect.backbones import IMAGENET_MEAN_RGB

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
    from kdetect import FasterRCNN

    arch, size = config["imported"], tuple(config["input_size"])
    images, source = photos(max(images_count, train_batch_size), size)
    inputs = write_inputs(folder, images, train_batch_size)
    weights = write_checkpoint(python, arch, folder, images)
    model = FasterRCNN.from_torchvision(weights, arch=arch, image_size=train_frame(arch, size))
    with np.load(inputs) as data:
        batch = train_batch(model, images[:train_batch_size], data["boxes"], data["labels"])
    peer = {"weights": str(weights), "inputs": str(inputs)}
    return model, batch, images.astype("float32"), peer, source
