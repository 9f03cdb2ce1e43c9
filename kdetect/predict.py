"""Prediction on images, folders and videos: :class:`Detector` and the JSON-lines format.

One JSON object per image (docs/cli.md)::

    {"file": "a.jpg", "width": 640, "height": 480,
     "objects": [{"bbox": [x1, y1, x2, y2], "label": "dog", "label_id": 11, "score": 0.98}]}

Video frames add ``"frame"`` (0-based index in the video). ``bbox`` is ``xyxy`` in pixels of the
image as stored (EXIF orientation applied).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdetect.data.batching import consecutive_batches
from kdetect.errors import DataError, InputShapeError, KdetectError, did_you_mean
from kdetect.models.outputs import Detections, fallback_class_names, split_detections

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def load_model(path: str | os.PathLike):
    """Load a detector from a run directory, a ``.keras`` file or a packed ``.kdet`` run.

    Returns:
        ``(model, classes)``; ``classes`` is ``None`` when no ``classes.json`` goes with it.
    """
    from kdetect.runs import load_model as _load

    return _load(path)


@dataclass
class InputItem:
    """One thing to predict on: an image file, or a frame of a video."""

    path: Path
    display: str  # the name written to "file"
    relative: Path  # where drawn images go under --save-images
    video: bool = False


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def collect_inputs(
    paths: Sequence[str | os.PathLike], recursive: bool = False
) -> tuple[list[InputItem], list[str]]:
    """Expand files and folders into input items; returns ``(items, problems)``.

    A folder contributes its images and videos (sorted; with ``recursive`` its sub-folders too).
    A missing path is a problem; a file with another extension is still tried as an image (and
    reported if it is not one).
    """
    items: list[InputItem] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(
                p
                for p in path.glob(pattern)
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
            )
            if not found:
                problems.append(
                    f"{path}: no images in this folder"
                    + ("" if recursive else " (use --recursive for sub-folders)")
                )
            for p in found:
                items.append(InputItem(p, str(p), p.relative_to(path), is_video(p)))
        elif path.is_file():
            items.append(InputItem(path, str(path), Path(path.name), is_video(path)))
        else:
            problems.append(f"{path}: no such file or folder")
    return items, problems


def read_video_frames(path: str | os.PathLike, step: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame_index, RGB uint8 frame)`` of a video, every ``step``-th frame (OpenCV)."""
    try:
        import cv2
    except ImportError:
        raise KdetectError(
            f"{path}: reading video needs OpenCV (pip install opencv-python-headless)"
        ) from None
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"{path}: cannot open video")
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % step == 0:
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise DataError(f"{path}: no frames could be read (not a video, or an unknown codec)")


class Detector:
    """A trained detector with its class names, for prediction from Python.

    Args:
        model: a run directory, ``.keras`` file, packed ``.kdet`` run, or a loaded model.
        classes: class names (read from the run when ``model`` is a path).
        min_score: detections scoring lower are dropped.
        max_detections: keep at most this many detections per image (highest scores first).
        only: keep only these class names.
        ignore: drop these class names.
        nms_iou: IoU threshold of the model's final non-maximum suppression (default: the
            model's own).
        class_agnostic: suppress overlapping boxes across classes too.
        image_size: ``(height, width)`` the images are resized into (default: the model's;
            see :meth:`~kdetect.models.base.DetectionModel.configure_detections`).

    Example::

        detector = Detector("runs/demo")
        results = detector.predict(["a.jpg", "b.png"])  # one dict per image, as in the JSON
    """

    def __init__(
        self,
        model: Any,
        classes: Sequence[str] | None = None,
        min_score: float = 0.5,
        max_detections: int | None = None,
        only: Iterable[str] | None = None,
        ignore: Iterable[str] | None = None,
        nms_iou: float | None = None,
        class_agnostic: bool = False,
        image_size: Sequence[int] | None = None,
    ):
        if isinstance(model, (str, os.PathLike)):
            model, loaded = load_model(model)
            classes = classes if classes is not None else loaded
        if nms_iou is not None or class_agnostic or image_size is not None:
            if not hasattr(model, "configure_detections"):
                raise KdetectError("this model's prediction settings cannot be changed")
            model.configure_detections(nms_iou, class_agnostic, image_size)
        self.model = model
        if classes is None:
            classes = fallback_class_names(getattr(model, "num_classes", 0))
        self.classes = list(classes)
        if not 0.0 <= min_score <= 1.0:
            raise KdetectError(f"--min-score: expected a value in [0, 1], got {min_score}")
        if max_detections is not None and max_detections < 1:
            raise KdetectError(f"--max-detections: expected at least 1, got {max_detections}")
        self.min_score = float(min_score)
        self.max_detections = max_detections
        self.only = self._class_ids(only, "--only")
        self.ignore = self._class_ids(ignore, "--ignore")

    def _class_ids(self, names: Iterable[str] | None, option: str) -> set[int] | None:
        if not names:
            return None
        ids = set()
        for name in names:
            if name not in self.classes:
                raise KdetectError(
                    f"{option}: unknown class {name!r}{did_you_mean(name, self.classes)}; "
                    f"classes: {', '.join(self.classes)}"
                )
            ids.add(self.classes.index(name))
        return ids

    # -- raw model output -> objects -----------------------------------------------------------
    def _objects(self, detections: Detections, width: int, height: int) -> list[dict]:
        """JSON-ready objects of one image: filtered by score and class, boxes clipped to it.

        ``min_score`` applies to the score as reported (rounded to 4 decimals), so a threshold
        copied from an output keeps that detection."""
        objects = []
        for box, confidence, label in zip(
            detections.boxes, detections.confidence, detections.labels, strict=True
        ):
            label, score = int(label), round(float(confidence), 4)
            if score < self.min_score:
                continue
            if self.only is not None and label not in self.only:
                continue
            if self.ignore is not None and label in self.ignore:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
            y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
            objects.append(
                {
                    "bbox": [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)],
                    "label": self.classes[label] if label < len(self.classes) else str(label),
                    "label_id": label,
                    "score": score,
                }
            )
        objects.sort(key=lambda o: -o["score"])
        if self.max_detections is not None:
            objects = objects[: self.max_detections]
        return objects

    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[list[dict]]:
        """Objects of each image (uint8 ``[H, W, 3]`` arrays); same-size images share a batch."""
        results: list[list[dict]] = []
        for batch in consecutive_batches(np.asarray(image) for image in images):
            outputs = self.model.predict_on_batch(np.stack(batch))
            for image, detections in zip(batch, split_detections(outputs), strict=True):
                height, width = image.shape[:2]
                results.append(self._objects(detections, width, height))
        return results

    def predict(
        self, inputs: np.ndarray | str | os.PathLike | Sequence[np.ndarray | str | os.PathLike]
    ) -> list[dict]:
        """Predict on image arrays or image files; one JSON-ready dict per image.

        ``inputs`` may be one path, one ``[H, W, 3]`` array, a ``[B, H, W, 3]`` array, or a list
        of paths and arrays. Unreadable files, and images outside the size limits of
        :mod:`kdetect.data.images`, raise :class:`~kdetect.errors.DataError`.
        """
        from kdetect.data.images import check_size, load_image

        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        elif isinstance(inputs, np.ndarray):
            if inputs.ndim not in (3, 4):
                raise InputShapeError(
                    f"expected an [H, W, 3] image or a [B, H, W, 3] batch, got shape {inputs.shape}"
                )
            inputs = [inputs] if inputs.ndim == 3 else list(inputs)
        names, arrays = [], []
        for item in inputs:
            if isinstance(item, (str, os.PathLike)):
                names.append(str(item))
                arrays.append(load_image(item))
            else:
                array = np.asarray(item)
                if array.ndim != 3 or array.shape[-1] != 3:
                    raise InputShapeError(
                        f"image {len(names)}: expected an [H, W, 3] image, got shape {array.shape}"
                    )
                check_size(array.shape[1], array.shape[0], f"image {len(names)}")
                names.append(None)
                arrays.append(array)
        objects = self.predict_arrays(arrays)
        return [
            result_line(name, array.shape[1], array.shape[0], objs)
            for name, array, objs in zip(names, arrays, objects, strict=True)
        ]

    def draw(self, image: np.ndarray, objects: list[dict]):
        """The image with ``objects`` (from :meth:`predict`) drawn on it (a PIL image); an image
        smaller than :data:`~kdetect.visualize.DRAW_MIN_SIDE` is enlarged so labels read."""
        from kdetect.visualize import DRAW_MIN_SIDE, draw_detections

        return draw_detections(
            image,
            [o["bbox"] for o in objects],
            [o["label_id"] for o in objects],
            [o["score"] for o in objects],
            self.classes,
            min_side=DRAW_MIN_SIDE,
        )


def result_line(
    file: str | None, width: int, height: int, objects: list[dict], frame: int | None = None
) -> dict:
    """One JSON line of ``kdetect predict``."""
    line: dict[str, Any] = {"file": file}
    if frame is not None:
        line["frame"] = frame
    line.update({"width": int(width), "height": int(height), "objects": objects})
    return line
