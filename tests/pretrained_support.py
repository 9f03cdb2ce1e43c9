"""Checkpoints in torchvision's layout for the tests, made once per session by torchvision itself.

``tests/torchvision_reference.py make`` builds a randomly initialised torchvision detector made
non-trivial (batch norm calibrated on real photos, sharpened classifier) and saves it as the
published files are laid out; kdetect tests import it as a user imports a COCO checkpoint.
``references`` records torchvision's inference (``run``) and training losses (``losses``) on it,
all of an architecture's torch work in one interpreter, once per session.
``assert_imported_run`` and ``assert_finetuned_from`` check what every imported architecture
must do through the CLI (``test_pretrained_cli.py``, ``test_family_imports.py``).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdetect.data.readers.voc import _read_voc_xml
from kdetect.pretrained.coco import coco_class_names
from tests.torch_peer import REPO_ROOT, run_torch
from tests.train_support import kdetect

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

# The photos whose detections the inference parity test compares, per architecture (the first
# is also the stage-by-stage photo). Every case for the cheapest architecture; for the ResNets,
# the resize rules' cases split between the two (upscaled and max_size-limited for v1, with
# the photo larger than 1333 px; portrait and landscape for v2).
PARITY_PHOTOS = {
    "fasterrcnn_resnet50_fpn": ("small", "max_size", "large"),
    "fasterrcnn_resnet50_fpn_v2": ("small", "tall", "wide"),
    "fasterrcnn_mobilenet_v3_large_fpn": tuple(p[0] for p in PHOTOS),
}

# The loss parity batch: two photos of different shapes (so their own sizes differ from the
# padded frame), with torchvision labels chosen for them (the raccoon set has one class).
LOSS_BATCH = ("tall", "wide")
LOSS_LABELS = {"tall": 18, "wide": 62}
LOSS_GT_ROWS = 2  # kdetect's ground truth rows: one padding row more than the most boxes
RPN_POST_NMS_TRAIN = 2000  # both sides' default
# Samplers that keep every candidate: no randomness left.
SAMPLE_ALL = {
    "rpn_batch_size_per_image": 10**6,
    "rpn_positive_fraction": 1.0,
    # kdetect's RoI sampler returns exactly this many rows per image: every proposal and ground
    # truth row; torchvision samples from at most as many.
    "box_batch_size_per_image": RPN_POST_NMS_TRAIN + LOSS_GT_ROWS,
    "box_positive_fraction": 1.0,
}
# The loss batch's resize: half of torchvision's 800 / 1333, the same rules and code at a
# quarter of the pixels ("tall" is resized by min_size, "wide" by max_size, as at full size).
LOSS_RESIZE = {"min_size": 400, "max_size": 667}

_MADE: dict[str, tuple] = {}
_REFERENCES: dict[str, dict[str, Path]] = {}


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


def photo_boxes(name: str) -> np.ndarray:
    """The real boxes of photo ``name`` of PHOTOS (its VOC annotation), xyxy pixels."""
    photo = {p[0]: p[1] for p in PHOTOS}[name]
    stem = photo.removesuffix(".jpg")
    xml = RACCOON.parent / "Annotations" / f"{stem}.xml"
    image = _read_voc_xml(xml, stem, [RACCOON])
    return np.array([obj.box for obj in image.objects], np.float32)


def checkpoint(tmp_path_factory, arch: str) -> tuple[Path, list[np.ndarray], list[Path]]:
    """``(weights.pth, photos as uint8 arrays, the photos' .npy files)`` for ``arch``, made once
    per session; skips when the raccoon photos are not available."""
    if arch not in _MADE:
        made = _photos(tmp_path_factory, arch)
        run_reference(*_make_command(arch, made))
        _MADE[arch] = made
    return _MADE[arch]


def references(tmp_path_factory, arch: str) -> dict[str, Path]:
    """torchvision's records for ``arch``'s checkpoint, made once per session by one torch
    interpreter (which also makes the checkpoint if no test has yet): ``run`` on
    PARITY_PHOTOS[arch] and ``losses`` on LOSS_BATCH with SAMPLE_ALL at LOSS_RESIZE."""
    if arch in _REFERENCES:
        return _REFERENCES[arch]
    made = _MADE.get(arch) or _photos(tmp_path_factory, arch)
    chain = [] if arch in _MADE else [*_make_command(arch, made), "+"]
    weights, _, files = made
    names = [p[0] for p in PHOTOS]
    records = {"run": weights.with_name("reference.npz"), "losses": weights.with_name("losses.npz")}
    photos = [files[names.index(name)] for name in PARITY_PHOTOS[arch]]
    chain += ["run", arch, weights, records["run"], *photos, "+"]
    truth = weights.with_name("truth.npz")
    boxes = {f"boxes_{i}": photo_boxes(name) for i, name in enumerate(LOSS_BATCH)}
    labels = {
        f"labels_{i}": np.full(len(boxes[f"boxes_{i}"]), LOSS_LABELS[name], np.int64)
        for i, name in enumerate(LOSS_BATCH)
    }
    np.savez(truth, **boxes, **labels)
    batch = [files[names.index(name)] for name in LOSS_BATCH]
    chain += ["losses", arch, weights, records["losses"], truth, *batch]
    chain += [f"--{k.replace('_', '-')}={v}" for k, v in {**SAMPLE_ALL, **LOSS_RESIZE}.items()]
    run_reference(*chain)
    _MADE[arch] = made
    _REFERENCES[arch] = records
    return records


def photo_arrays(folder: Path, names) -> list[Path]:
    """The raccoon photos ``names`` (stems) saved in ``folder`` as uint8 RGB .npy files, what the
    torch references read."""
    files = []
    for name in names:
        with Image.open(RACCOON / f"{name}.jpg") as image:
            np.save(folder / f"{name}.npy", np.asarray(image.convert("RGB")))
        files.append(folder / f"{name}.npy")
    return files


def _photos(tmp_path_factory, arch: str) -> tuple[Path, list[np.ndarray], list[Path]]:
    """A new folder for ``arch`` holding PHOTOS as .npy files: ``(its checkpoint's path, the
    photos, their files)``; skips when the raccoon photos are not available."""
    if not RACCOON.is_dir():
        pytest.skip("../shared/data/raccoon not available")
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
    return folder / "checkpoint.pth", images, files


def _make_command(arch: str, made) -> list:
    """The reference's ``make`` command writing ``arch``'s checkpoint, calibrated on two photos."""
    weights, _, files = made
    # v1's COCO_V1 file predates torchvision 0.13 and has its old module names; others not.
    legacy = ["--legacy-names"] if arch == "fasterrcnn_resnet50_fpn" else []
    return ["make", arch, weights, *legacy, "--calibrate", files[1], files[3]]


def assert_imported_run(run: Path, arch: str, options: dict, photo: Path, out: Path) -> None:
    """``run``, imported as ``arch`` by ``kdetect checkpoint import``: its kdetect.json names the
    architecture, its recipe.yaml rebuilds ``options`` (the architecture's constructor options),
    and ``kdetect predict RUN PHOTO --min-score 0.05`` writes COCO objects inside the photo."""
    from kdetect.config import load
    from kdetect.config.builders import model_kwargs

    assert json.loads((run / "kdetect.json").read_text())["arch"] == arch
    kwargs = model_kwargs(load(run / "recipe.yaml", check_paths=False).model, 90)
    # as plain JSON: the recipe holds a tuple option as a list
    assert json.dumps({key: kwargs[key] for key in options}) == json.dumps(options)

    assert kdetect("predict", run, photo, "--min-score", "0.05", "--output", out) == 0
    (line,) = [json.loads(text) for text in out.read_text().splitlines() if text.strip()]
    with Image.open(photo) as image:
        width, height = image.size
    assert (line["width"], line["height"]) == (width, height)
    assert line["objects"], "the reference model detects something above 0.05"
    for obj in line["objects"]:
        assert obj["label"] == coco_class_names()[obj["label_id"]]
        x1, y1, x2, y2 = obj["bbox"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


def assert_finetuned_from(log: str, source_run: Path, tuned, reinitialised: list[str]) -> dict:
    """``tuned`` was trained with ``train.init_from=source_run``: the training ``log`` says how
    many variables were copied and re-initialised, the re-initialised ones are exactly the
    kernels and biases of the layers ``reinitialised``, and the frozen variables still hold the
    imported values. Returns the frozen variables by name.

    Frozen: not trainable, nor the moving statistics of a batch norm that trains (training
    updates those though no gradient reaches them)."""
    from kdetect.engine.training import transfer_weights
    from kdetect.runs import load_model

    found = re.search(
        r"initialised (\d+) of (\d+) variables from (\S+) \((\d+) re-initialised\)",
        " ".join(log.split()),
    )
    assert found, log
    copied, total, source_path, skipped_count = found.groups()
    assert source_path == str(source_run)
    source, _ = load_model(source_run)
    assert len(tuned.weights) == len(source.weights) == int(total)

    def path_of(model, variable) -> str:  # as transfer_weights matches them
        return variable.path.removeprefix(f"{model.name}/")

    imported = {path_of(source, v): v for v in source.weights}
    trainable = {path_of(tuned, v) for v in tuned.trainable_weights}
    frozen = {}
    for variable in tuned.non_trainable_weights:
        name = path_of(tuned, variable)
        layer, _, kind = name.rpartition("/")
        statistic = kind in ("moving_mean", "moving_variance")
        if not (statistic and {f"{layer}/gamma", f"{layer}/beta"} & trainable):
            frozen[name] = variable
    for name, variable in frozen.items():
        np.testing.assert_array_equal(variable.numpy(), imported[name].numpy(), err_msg=name)
    # Last: transfer_weights overwrites tuned's variables with the imported ones.
    done, skipped = transfer_weights(source, tuned)
    assert done == int(copied) == int(total) - int(skipped_count)
    assert sorted(path_of(tuned, v) for v in tuned.weights if v.path in skipped) == sorted(
        f"{layer}/{name}" for layer in reinitialised for name in ("bias", "kernel")
    )
    return frozen
