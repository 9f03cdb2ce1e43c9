"""The in-memory form of an annotated dataset, shared by readers, the pipeline and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Record:
    """One image and its ground truth.

    Attributes:
        filename: path of the image file (for synthetic data, a stable name such as
            ``shapes_000001.png``). Evaluation matches detections to records by this name's
            basename.
        width, height: size of the image in pixels as stored on disk (after EXIF rotation).
        boxes: float32 [M, 4], ``xyxy`` in absolute pixels of the image.
        labels: int32 [M], index into the dataset's class list.
        difficult: bool [M]; VOC's ``difficult`` flag or COCO's ``iscrowd``. Evaluation ignores
            these objects (neither a hit nor a miss).
        image: optional uint8 [H, W, 3] pixels held in memory (synthetic data); when ``None`` the
            image is read from ``filename``.
        image_id: optional id from the source (COCO image id); ``None`` when the format has none.
    """

    filename: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray = None
    image: np.ndarray | None = field(default=None, repr=False)
    image_id: int | str | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)
        if self.difficult is None:
            self.difficult = np.zeros(len(self.labels), dtype=bool)
        self.difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.difficult)):
            raise ValueError(
                f"{self.filename}: boxes, labels and difficult differ in length "
                f"({len(self.boxes)}, {len(self.labels)}, {len(self.difficult)})"
            )


@dataclass
class Annotations:
    """A dataset split: the class names (index = label id) and its records."""

    classes: list[str]
    records: list[Record]

    def __len__(self) -> int:
        return len(self.records)
