"""A Label Studio export -> a kdetect CSV dataset (``train.csv``, ``val.csv``, ``images/``).

Each annotated task contributes its latest annotation that was not skipped (the rule of the
Label Studio export reader, :func:`~kdetect.data.readers.labelstudio.latest_entry`); its
``rectanglelabels`` regions (:func:`~kdetect.data.labelstudio.rectangle_regions`, converted with
:func:`~kdetect.data.labelstudio.box_from_region` at the downloaded image's own size) are renamed
to the model's classes; regions of labels the model does not know are counted and left out. The
tasks, in id order, are split deterministically: every ``k``-th one (``k = round(1 /
val_fraction)``) is held out for validation, at least one each way. The dataset is written to a
temporary folder and renamed when complete, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from kdetect.apps.labelstudio.client import LabelStudioClient
from kdetect.apps.labelstudio.labelconfig import LabelConfig, LabelMap
from kdetect.apps.labelstudio.tasks import TaskError, load_task_image
from kdetect.apps.uploads import Limits
from kdetect.data.labelstudio import box_from_region, rectangle_regions
from kdetect.data.readers.csv import CSV_COLUMNS
from kdetect.data.readers.labelstudio import latest_entry


@dataclass
class DatasetInfo:
    """What :func:`write_dataset` wrote."""

    root: Path
    train: int = 0
    val: int = 0
    boxes: int = 0
    skipped_regions: dict[str, int] = field(default_factory=dict)


def annotated_tasks(tasks: list[dict]) -> list[tuple[dict, dict]]:
    """``(task, annotation)`` for each task with a usable annotation, in task id order."""
    pairs = [
        (task, latest_entry(task.get("annotations"), f"task {task.get('id')}", "annotations"))
        for task in tasks
    ]
    return sorted(((t, a) for t, a in pairs if a is not None), key=lambda p: p[0].get("id", 0))


def split_of(index: int, count: int, val_fraction: float) -> str:
    """``val`` for every ``k``-th of ``count`` items (the last one at least), else ``train``."""
    step = max(2, round(1.0 / val_fraction)) if val_fraction > 0 else count + 1
    if count >= 2 and (index % step == step - 1 or (count < step and index == count - 1)):
        return "val"
    return "train"


def _rows(annotation: dict, config: LabelConfig, labels: LabelMap, name: str, size, info):
    width, height = size
    rows = []
    for region in rectangle_regions(annotation.get("result") or []):
        if region.get("from_name", config.from_name) != config.from_name:
            continue
        sized = {**region, "original_width": width, "original_height": height}
        label, box = box_from_region(sized)
        if label not in labels.to_class:
            info.skipped_regions[label] = info.skipped_regions.get(label, 0) + 1
            continue
        rows.append([name, width, height, labels.to_class[label], *(f"{v:.2f}" for v in box)])
    return rows or [[name, width, height, "", "", "", "", ""]]


def write_dataset(
    tasks: list[dict],
    config: LabelConfig,
    labels: LabelMap,
    client: LabelStudioClient | None,
    folder: Path,
    limits: Limits,
    val_fraction: float = 0.25,
) -> DatasetInfo:
    """Download the annotated tasks' images and write the CSV dataset at ``folder``."""
    pairs = annotated_tasks(tasks)
    if len(pairs) < 2:
        raise TaskError(f"{len(pairs)} annotated task(s): retraining needs at least 2")
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "images").mkdir(parents=True)
    info = DatasetInfo(folder)
    splits: dict[str, list] = {"train": [], "val": []}
    try:
        for index, (task, annotation) in enumerate(pairs):
            image, _ = load_task_image(task, config.image_key, client, limits)
            name = f"task-{task.get('id', index)}.png"
            Image.fromarray(image).save(partial / "images" / name)
            size = (image.shape[1], image.shape[0])
            try:
                rows = _rows(annotation, config, labels, name, size, info)
            except ValueError as exc:
                raise TaskError(f"task {task.get('id')}: {exc}") from None
            split = split_of(index, len(pairs), val_fraction)
            splits[split] += rows
            setattr(info, split, getattr(info, split) + 1)
            info.boxes += sum(1 for row in rows if row[3])
        for split, rows in splits.items():
            with open(partial / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(CSV_COLUMNS)
                writer.writerows(rows)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return info
