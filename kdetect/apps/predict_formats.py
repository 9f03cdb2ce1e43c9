"""``kdetect predict --format``: the JSON lines of :mod:`kdetect.apps.predict` in other tools'
formats.

Every format starts from the same result lines (``{"file", "width", "height", "objects"}``),
turned into :class:`~kdetect.data.records.Record` s, and reuses the dataset writers of
:mod:`kdetect.data.writers`, so predictions read back with the dataset readers:

* ``coco``: a results list (``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``,
  ``score``) for ``COCO.loadRes``. With ``ground_truth=FILE`` the image ids (matched by file
  name) and category ids (matched by name) are that file's; otherwise images are numbered
  ``1..n`` in input order, category id = label id + 1, and ``<stem>_images.json`` beside the
  results holds those images and categories (a COCO file without annotations).
* ``voc``: a folder ``Annotations/<stem>.xml`` + ``ImageSets/Main/predict.txt`` (no scores).
* ``yolo``: a folder ``labels/<stem>.txt`` + ``data.yaml`` (``names``, split ``predict:
  images``); with ``save_conf=true`` a 6th column holds the score (Ultralytics' ``save_conf``).
* ``labelstudio``: a task list with ``predictions`` (``model_version``, ``score`` = the mean
  score, ``result`` regions with scores), importable as pre-annotations. ``image_root=DIR``
  writes ``/data/local-files/?d=<path relative to DIR>`` (Label Studio's local storage) instead
  of the path as given; an image outside ``DIR`` is refused.

The builders are pure (lines in, documents out); :func:`write_predictions` writes them
atomically.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from kdetect.data.readers.coco import read_coco_json
from kdetect.data.records import Record
from kdetect.data.writers.coco import coco_categories, xywh
from kdetect.data.writers.labelstudio import local_files_url, regions_of
from kdetect.data.writers.voc import SPLIT_FOLDER, voc_xml
from kdetect.data.writers.yolo import label_lines, write_data_yaml
from kdetect.plumbing.errors import DataError, KdetectError
from kdetect.plumbing.parsing import parse_bool
from kdetect.plumbing.paths import atomic_path

FORMATS = ("jsonl", "coco", "voc", "yolo", "labelstudio")
#: Formats written as one file; the others fill a folder.
FILE_FORMATS = ("jsonl", "coco", "labelstudio")
OPTIONS = {
    "jsonl": (),
    "coco": ("ground_truth",),
    "voc": (),
    "yolo": ("save_conf",),
    "labelstudio": ("image_root", "model_version"),
}
SPLIT = "predict"


def parse_options(format: str, pairs: list[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` of ``--format-option``, checked against the format's keys."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in OPTIONS[format]:
            known = ", ".join(OPTIONS[format]) or "none"
            raise KdetectError(
                f"--format-option {pair!r}: expected KEY=VALUE with a key of --format {format} "
                f"({known})"
            )
        options[key] = value.strip()
    _save_conf(options)  # a boolean: refused now, not after predicting
    return options


def _save_conf(options: dict[str, str]) -> bool:
    """YOLO's ``save_conf`` option (false when not given)."""
    return parse_bool(options.get("save_conf", "false"), "--format-option save_conf")


def line_record(line: dict) -> tuple[Record, list[float]]:
    """The record (boxes, label ids) and scores of one result line."""
    objects = line["objects"]
    record = Record(
        filename=str(line["file"]),
        width=int(line["width"]),
        height=int(line["height"]),
        boxes=[o["bbox"] for o in objects],
        labels=[o["label_id"] for o in objects],
    )
    return record, [float(o["score"]) for o in objects]


def _stems(lines: list[dict]) -> list[str]:
    """The file stem of each line: one output file per image, so stems must differ."""
    seen: dict[str, str] = {}
    for line in lines:
        stem = Path(str(line["file"])).stem
        if stem in seen and seen[stem] != line["file"]:
            raise DataError(f"{line['file']}: same file name as {seen[stem]} (one file per stem)")
        seen[stem] = line["file"]
    return [Path(str(line["file"])).stem for line in lines]


def coco_results(
    lines: list[dict], classes: list[str], ground_truth: dict | None = None, where: str = ""
) -> tuple[list[dict], dict | None]:
    """``(results, images document)``: the results list and, without ``ground_truth``, the
    COCO document (images, categories) their ids refer to."""
    if ground_truth is None:
        image_ids = list(range(1, len(lines) + 1))
        category = {name: i + 1 for i, name in enumerate(classes)}
    else:
        image_ids = _ground_truth_ids(lines, ground_truth, where)
        category = {c["name"]: c["id"] for c in ground_truth["categories"]}
    results = []
    for line, image_id in zip(lines, image_ids, strict=True):
        for obj in line["objects"]:
            if obj["label"] not in category:
                raise DataError(
                    f"{where}: no category {obj['label']!r} (predicted on {line['file']})"
                )
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category[obj["label"]],
                    "bbox": [round(v, 2) for v in xywh(obj["bbox"])],
                    "score": obj["score"],
                }
            )
    if ground_truth is not None:
        return results, None
    images = [
        {"id": i, "file_name": os.path.basename(line["file"]), "width": line["width"],
         "height": line["height"]}
        for i, line in zip(image_ids, lines, strict=True)
    ]  # fmt: skip
    return results, {"images": images, "annotations": [], "categories": coco_categories(classes)}


def _ground_truth_ids(lines: list[dict], ground_truth: dict, where: str) -> list:
    """The ground truth's image id of each line, matched by file name."""
    by_name: dict[str, object] = {}
    for image in ground_truth["images"]:
        by_name.setdefault(os.path.basename(str(image.get("file_name"))), image.get("id"))
    ids = []
    for line in lines:
        name = os.path.basename(str(line["file"]))
        if name not in by_name:
            raise DataError(f"{where}: no image {name!r} in the ground truth ({line['file']})")
        ids.append(by_name[name])
    return ids


def voc_files(lines: list[dict], classes: list[str]) -> dict[str, str]:
    """Relative path -> text of the VOC folder: one XML per image and the id list."""
    files = {}
    stems = _stems(lines)
    for line, stem in zip(lines, stems, strict=True):
        record, _ = line_record(line)
        files[f"Annotations/{stem}.xml"] = voc_xml(record, classes)
    files[f"{SPLIT_FOLDER.as_posix()}/{SPLIT}.txt"] = "".join(f"{s}\n" for s in stems)
    return files


def yolo_files(lines: list[dict], save_conf: bool = False) -> dict[str, str]:
    """Relative path -> text of the label files (``data.yaml`` is written beside them)."""
    files = {}
    for line, stem in zip(lines, _stems(lines), strict=True):
        record, scores = line_record(line)
        files[f"labels/{stem}.txt"] = "".join(label_lines(record, scores if save_conf else None))
    return files


def labelstudio_tasks(
    lines: list[dict], classes: list[str], model_version: str, image_root: str | None = None
) -> list[dict]:
    """One Label Studio task per image with the model's regions as a prediction."""
    tasks = []
    for line in lines:
        record, scores = line_record(line)
        image = str(line["file"])
        if image_root is not None:
            image = local_files_url(below_root(image, image_root))
        prediction = {
            "model_version": model_version,
            "score": round(sum(scores) / len(scores), 4) if scores else 0.0,
            "result": regions_of(record, classes, scores),
        }
        tasks.append({"data": {"image": image}, "predictions": [prediction]})
    return tasks


def below_root(image: str, image_root: str) -> str:
    """``image``'s path relative to ``image_root`` (Label Studio's local-storage document root);
    an image outside the root is refused, as Label Studio could not serve its URL."""
    relative = os.path.relpath(os.path.abspath(image), os.path.abspath(image_root))
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise KdetectError(
            f"--format-option image_root={image_root}: the image {image} is not inside it "
            "(Label Studio serves only files below its document root)"
        )
    return relative


def check_images(format: str, options: dict[str, str], images: list[str]) -> None:
    """Refuse, before any prediction, an image the format could not point to: for
    ``labelstudio`` with ``image_root``, one outside that folder."""
    if format == "labelstudio" and "image_root" in options:
        for image in images:
            below_root(image, options["image_root"])


def model_version(info) -> str:
    """``<run name>@<UTC time the model file was written>``: stable for one trained model.

    ``info`` is the run's :class:`~kdetect.runs.RunInfo`.
    """
    path = Path(info.model_path or info.path)
    stamp = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = Path(info.path).name if Path(info.path).is_dir() else Path(info.path).stem
    return f"{name}@{stamp}"


def write_predictions(
    format: str,
    lines: list[dict],
    classes: list[str],
    output: str | os.PathLike,
    options: dict[str, str],
    version: str = "kdetect",
) -> list[Path]:
    """Write ``lines`` as ``format`` to ``output`` (a file, or a folder for voc/yolo); the
    files written."""
    output = Path(output)
    if format in ("voc", "yolo"):
        if format == "voc":
            files = voc_files(lines, classes)
        else:
            files = yolo_files(lines, _save_conf(options))
        with atomic_path(output) as tmp:
            tmp.mkdir()
            for relative, text in files.items():
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                (tmp / relative).write_text(text, encoding="utf-8")
            if format == "yolo":
                write_data_yaml(tmp, classes, {SPLIT: "images"})
        return [output]
    if format == "labelstudio":
        tasks = labelstudio_tasks(
            lines, classes, options.get("model_version", version), options.get("image_root")
        )
        return [_write_json(output, tasks)]
    if format != "coco":
        raise KdetectError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    truth_path = options.get("ground_truth")
    truth = read_coco_json(Path(truth_path)) if truth_path else None
    results, images = coco_results(lines, classes, truth, truth_path or str(output))
    written = [_write_json(output, results)]
    if images is not None:
        written.append(_write_json(output.with_name(f"{output.stem}_images.json"), images))
    return written


def _write_json(path: Path, value) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value), encoding="utf-8")
    return path


__all__ = [
    "FILE_FORMATS",
    "FORMATS",
    "below_root",
    "check_images",
    "coco_results",
    "labelstudio_tasks",
    "line_record",
    "model_version",
    "parse_options",
    "voc_files",
    "write_predictions",
    "yolo_files",
]
