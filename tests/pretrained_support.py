"""Checkpoints in torchvision's layout for the tests, made once per session by torchvision itself.

``tests/torchvision_reference.py make`` builds a randomly initialised torchvision detector made
non-trivial (batch norm calibrated on real photos, sharpened classifier) and saves it as the
published files are laid out; kdetect tests import it as a user imports a COCO checkpoint.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.torch_peer import REPO_ROOT, run_torch

RACCOON = REPO_ROOT.parent / "shared" / "data" / "raccoon" / "JPEGImages"
REFERENCE = Path(__file__).with_name("torchvision_reference.py")
ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
)

# (name, photo, resize to (width, height) or None): small, tall, wide, wide enough that the
# max_size rule decides the scale, and larger than 1333 px.
PHOTOS = [
    ("small", "raccoon-102.jpg", None),  # 259x194
    ("tall", "raccoon-103.jpg", None),  # 480x640
    ("wide", "raccoon-104.jpg", None),  # 600x304
    ("max_size", "raccoon-14.jpg", None),  # 900x484: 1333 / 900 < 800 / 484
    ("large", "raccoon-105.jpg", (1440, 1920)),  # 720x960 upscaled past 1333
]

_MADE: dict[str, tuple] = {}


def write_safetensors(path: Path, arrays: dict[str, tuple[str, np.ndarray]]) -> None:
    """A minimal safetensors writer, independent of the reader: {name: (dtype tag, array)}."""
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for key, (tag, array) in arrays.items():
        blob = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[key] = {
            "dtype": tag,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def run_reference(*args) -> None:
    run_torch(REFERENCE.read_text(), *args, timeout=900)


def checkpoint(tmp_path_factory, arch: str) -> tuple[Path, list[np.ndarray], list[Path]]:
    """``(weights.pth, photos as uint8 arrays, the photos' .npy files)`` for ``arch``, made once
    per session; skips when the raccoon photos are not available."""
    if not RACCOON.is_dir():
        pytest.skip("../shared/data/raccoon not available")
    if arch not in _MADE:
        folder = tmp_path_factory.mktemp(arch)
        images, files = [], []
        for name, photo, size in PHOTOS:
            image = Image.open(RACCOON / photo).convert("RGB")
            if size is not None:
                image = image.resize(size, Image.BILINEAR)
            array = np.asarray(image)
            np.save(folder / f"{name}.npy", array)
            images.append(array)
            files.append(folder / f"{name}.npy")
        weights = folder / "checkpoint.pth"
        # v1's COCO_V1 file predates torchvision 0.13 and has its old module names; others not.
        names = ["--legacy-names"] if arch == "fasterrcnn_resnet50_fpn" else []
        run_reference("make", arch, weights, *names, "--calibrate", files[1], files[3])
        _MADE[arch] = (weights, images, files)
    return _MADE[arch]
