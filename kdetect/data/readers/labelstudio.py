"""Label Studio: the JSON export of a project (a list of tasks).

Each task names its image in ``data.image`` and holds ``annotations``, each with a ``result``
list of regions. The reader takes the latest annotation that was not cancelled (by
``updated_at``, else ``created_at``, else its place in the list) and its ``rectanglelabels``
regions (percent of the image, converted by :mod:`kdetect.data.labelstudio`); other region types
are ignored. A task without such an annotation is not labelled yet and is skipped (logged).

The image URL becomes a local file: ``/data/upload/<n>/<file>`` (Label Studio prefixes uploaded
names with 8 hex digits and a dash; both names are tried), ``/data/local-files/?d=<path>``, an
``http(s)`` URL (its file name) or a plain path, looked up in ``images_dir`` (as given, then by
file name) and then beside the JSON file. The size is the regions' ``original_width`` and
``original_height``, else the image header.

:func:`read_tasks` reads ``predictions`` instead of annotations (``kdetect predict --format
labelstudio`` writes them) for checking what a model produced.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from kdetect.data.images import image_size
from kdetect.data.labelstudio import box_from_region, rectangle_regions
from kdetect.data.readers.common import (
    RawImage,
    RawObject,
    find_annotation_file,
    find_image,
    float32_box,
    read_json_file,
)
from kdetect.plumbing.errors import DataError

logger = logging.getLogger(__name__)

SOURCES = ("annotations", "predictions")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def read_labelstudio(path: Path, split: str, images_dir: Path | None) -> tuple[list, None]:
    """The labelled tasks of ``path`` (the export JSON, or ``<split>.json`` in the folder)."""
    json_path = find_annotation_file(
        path,
        [path / f"{split}.json", path / "labelstudio" / f"{split}.json"],
        f"Label Studio export for split {split!r}",
    )
    return read_tasks(json_path, images_dir, "annotations"), None


def read_tasks(json_path: Path, images_dir: Path | None, source: str) -> list[RawImage]:
    """Every task of ``json_path`` that has ``source`` (annotations or predictions)."""
    tasks = read_json_file(json_path)
    if not isinstance(tasks, list):
        raise DataError(f"{json_path}: expected a JSON list of tasks (Label Studio's JSON export)")
    images, skipped = [], 0
    for k, task in enumerate(tasks):
        image = _read_task(task, k, json_path, images_dir, source)
        if image is None:
            skipped += 1
        else:
            images.append(image)
    if skipped:
        logger.warning("%s: %d task(s) without %s skipped", json_path, skipped, source)
    return images


def _read_task(
    task: object, k: int, json_path: Path, images_dir: Path | None, source: str
) -> RawImage | None:
    """One task's image and regions, or ``None`` when it has no usable annotation."""
    where = f"{json_path}: task {task.get('id', f'[{k}]')}" if isinstance(task, dict) else ""
    if not isinstance(task, dict):
        raise DataError(f"{json_path}: task [{k}]: expected a JSON object")
    data = task.get("data")
    url = data.get("image") if isinstance(data, dict) else None
    if not isinstance(url, str) or not url.strip():
        raise DataError(f"{where}: missing data.image (the image URL or path)")
    entry = latest_entry(task.get(source), where, source)
    if entry is None:
        return None
    results = entry.get("result", [])
    if not isinstance(results, list):
        raise DataError(f"{where}: {source} 'result' must be a list")
    filename = local_image(url, json_path.parent, images_dir)
    objects, sizes = [], set()
    for n, region in enumerate(rectangle_regions(r for r in results if isinstance(r, dict))):
        region_where = f"{where}: region {region.get('id', n)}"
        try:
            label, box = box_from_region(region)
        except ValueError as exc:
            raise DataError(f"{region_where}: {exc}") from None
        sizes.add((region["original_width"], region["original_height"]))
        objects.append(RawObject(label.strip(), float32_box(box), False, region_where))
    width, height = _task_size(sizes, filename, where)
    image_id = task.get("id")
    return RawImage(filename, width, height, where, objects, image_id)


def latest_entry(entries: object, where: str, source: str) -> dict | None:
    """The newest entry of ``annotations``/``predictions`` not cancelled, or ``None``."""
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise DataError(f"{where}: {source!r} must be a list")
    usable = [
        (str(e.get("updated_at") or e.get("created_at") or ""), i, e)
        for i, e in enumerate(entries)
        if isinstance(e, dict) and not e.get("was_cancelled")
    ]
    return max(usable, key=lambda item: item[:2])[2] if usable else None


def local_image(url: str, json_dir: Path, images_dir: Path | None) -> str:
    """The local file of a task's image URL (see the module docstring for the forms)."""
    parsed = urlparse(url)
    if parsed.path.startswith("/data/local-files"):
        names = parse_qs(parsed.query).get("d", [])
    elif parsed.path.startswith("/data/upload/") or parsed.scheme in ("http", "https", "s3", "gs"):
        name = unquote(Path(parsed.path).name)
        names = [name, _UPLOAD_PREFIX.sub("", name)]
    else:
        names = [url]
    if not names:
        raise DataError(f"{url}: local-files URL without ?d=<path>")
    candidates = [Path(n) for n in names] + [Path(Path(n).name) for n in names]
    for candidate in candidates:
        if candidate.is_absolute() and candidate.is_file():
            return str(candidate)
    folders = [images_dir, json_dir, json_dir / "images"]
    for candidate in candidates:
        found = find_image(str(candidate), folders)
        if Path(found).is_file():
            return found
    return find_image(str(candidates[-1]), folders)


def _task_size(sizes: set, filename: str, where: str) -> tuple[int, int]:
    """The image size the regions give (they must agree), else the image header's."""
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise DataError(f"{where}: regions give different image sizes ({shown})")
    if sizes:
        width, height = next(iter(sizes))
        if not (isinstance(width, int) and isinstance(height, int)) or width <= 0 or height <= 0:
            raise DataError(f"{where}: original_width/original_height must be positive integers")
        return width, height
    if not Path(filename).is_file():
        raise DataError(f"{where}: image {filename} not found")
    return image_size(filename)
