"""Prediction on images, folders and videos: :class:`Detector` and the JSON-lines format.

One JSON object per image (docs/cli.md)::

    {"file": "a.jpg", "width": 640, "height": 480,
     "objects": [{"bbox": [x1, y1, x2, y2], "label": "dog", "label_id": 11, "score": 0.98}]}

Video frames add ``"frame"`` (0-based index in the video). ``bbox`` is ``xyxy`` in pixels of the
image as stored (EXIF orientation applied).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from kdetect.data.batching import consecutive_batches
from kdetect.data.images import check_size, load_image
from kdetect.drawing.visualize import DRAW_MIN_SIDE, draw_detections
from kdetect.models.outputs import Detections, fallback_class_names, split_detections
from kdetect.plumbing.errors import DataError, InputShapeError, KdetectError, did_you_mean
from kdetect.plumbing.paths import atomic_path
from kdetect.runs import load_model  # (model, classes) of a run, .keras or .kdet: re-exported

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


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


@dataclass
class Frame:
    """One image to predict on: an image file, or one frame of a video (``index`` set), and
    where its drawn copy goes (``None`` when nothing is drawn)."""

    item: InputItem
    image: np.ndarray
    index: int | None = None
    drawn: Path | None = None

    def batch_key(self) -> Hashable:
        """Images of one size share a batch; each video frame is predicted alone."""
        return self.image.shape if self.index is None else (self.item.display, self.index)


#: Suffixes Pillow writes; a drawn copy of another kind of image is a PNG.
DRAWN_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def drawn_path(folder: str | os.PathLike, item: InputItem, index: int | None = None) -> Path:
    """Where the drawn copy of an image (or of frame ``index`` of a video) goes under
    ``folder``: the input's place relative to the folder it came from, ``NAME_000042.jpg``
    for a video frame."""
    folder = Path(folder)
    if index is not None:
        return folder / f"{item.relative.with_suffix('')}_{index:06d}.jpg"
    relative = item.relative
    if relative.suffix.lower() not in DRAWN_SUFFIXES:
        relative = relative.with_suffix(".png")
    return folder / relative


def read_frames(
    items: Iterable[InputItem],
    frame_step: int = 1,
    drawn: Callable[[InputItem, int | None], Path | None] | None = None,
    on_error: Callable[[InputItem, KdetectError], None] | None = None,
    on_read: Callable[[InputItem], None] | None = None,
) -> Iterator[Frame]:
    """Each image, and every ``frame_step``-th frame of each video, in order.

    ``drawn(item, index)`` gives the drawn copy's path (None: not drawn). An input that cannot
    be read raises, or with ``on_error`` is handed to it and skipped from there on;
    ``on_read(item)`` is called once an input has been read whole.
    """
    for item in items:
        try:
            if item.video:
                for index, frame in read_video_frames(item.path, frame_step):
                    yield Frame(item, frame, index, drawn(item, index) if drawn else None)
            else:
                image = load_image(item.path)
                yield Frame(item, image, None, drawn(item, None) if drawn else None)
        except KdetectError as exc:
            if on_error is None:
                raise
            on_error(item, exc)
            continue
        if on_read is not None:
            on_read(item)


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
            raise KdetectError(f"min_score: expected a value in [0, 1], got {min_score}")
        if max_detections is not None and max_detections < 1:
            raise KdetectError(f"max_detections: expected at least 1, got {max_detections}")
        self.min_score = float(min_score)
        self.max_detections = max_detections
        self.only = self._class_ids(only, "only")
        self.ignore = self._class_ids(ignore, "ignore")

    def _class_ids(self, names: Iterable[str] | None, parameter: str) -> set[int] | None:
        if not names:
            return None
        ids = set()
        for name in names:
            if name not in self.classes:
                raise KdetectError(
                    f"{parameter}: unknown class {name!r}{did_you_mean(name, self.classes)}; "
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
        :mod:`kdetect.data.images`, raise :class:`~kdetect.plumbing.errors.DataError`.
        """
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

    def predict_frames(
        self, frames: Iterable[Frame], batch_size: int = 1
    ) -> Iterator[tuple[Frame, dict]]:
        """``(frame, result line)`` of each frame, predicted ``batch_size`` same-size images
        at a time; a frame with a ``drawn`` path is drawn there (written under a temporary
        name, then renamed)."""
        for batch in consecutive_batches(frames, batch_size, key=Frame.batch_key):
            results = self.predict_arrays([frame.image for frame in batch])
            for frame, objects in zip(batch, results, strict=True):
                height, width = frame.image.shape[:2]
                line = result_line(frame.item.display, width, height, objects, frame=frame.index)
                if frame.drawn is not None:  # atomic_path creates the folder
                    with atomic_path(frame.drawn) as target:
                        self.draw(frame.image, line["objects"]).save(target)
                yield frame, line

    def predict_paths(
        self,
        paths: Sequence[str | os.PathLike],
        recursive: bool = False,
        frame_step: int = 1,
        batch_size: int = 1,
        save_images: str | os.PathLike | None = None,
    ) -> Iterator[dict]:
        """The result line of each image and video frame in ``paths`` (files and folders, as
        ``kdetect predict`` reads them), one at a time; with ``save_images``, each drawn into
        that folder as ``kdetect predict --save-images`` draws it. A missing path, an empty
        folder or an unreadable file raises :class:`~kdetect.plumbing.errors.DataError`.

        Example::

            for line in Detector("runs/demo").predict_paths(["photos/", "clip.mp4"]):
                print(line["file"], line.get("frame"), len(line["objects"]))
        """
        items, problems = collect_inputs(paths, recursive=recursive)
        if problems:
            raise DataError(problems[0])
        drawn = None if save_images is None else partial(drawn_path, save_images)
        frames = read_frames(items, frame_step, drawn)
        for _, line in self.predict_frames(frames, batch_size):
            yield line

    def draw(self, image: np.ndarray, objects: list[dict]):
        """The image with ``objects`` (from :meth:`predict`) drawn on it (a PIL image); an image
        smaller than :data:`~kdetect.drawing.visualize.DRAW_MIN_SIDE` is enlarged so labels read."""
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
