"""What every annotation writer shares: placing image files, numbers as text, one class list."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from kdetect.data.records import Annotations, Record
from kdetect.plumbing.errors import DataError


class ImageFiles:
    """Copies (or hard-links) source images into an output folder, one source per target.

    Two different source files that would land on the same output path (same file name from two
    folders) are refused with a DataError naming both; the same source placed twice (an image in
    two splits) is placed once.
    """

    def __init__(self, root: Path, link: bool = False):
        self.root = Path(root)
        self.link = link
        self.sources: dict[Path, str] = {}

    def place(self, record: Record, folder: str, name: str | None = None) -> str:
        """Put ``record``'s image into ``folder`` (relative to the root); its relative path."""
        name = name or os.path.basename(record.filename)
        relative = f"{folder}/{name}" if folder else name
        self.claim(relative, record.filename)
        target = self.root / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_or_link(Path(record.filename), target, self.link)
        return relative

    def claim(self, relative: str, source: str) -> None:
        """Reserve the output file ``relative`` for ``source``; DataError if another has it."""
        key = Path(relative)
        known = self.sources.setdefault(key, source)
        if os.path.abspath(known) != os.path.abspath(source):
            raise DataError(
                f"{source}: would be written as {relative}, like {known}; rename one of them"
            )


def _copy_or_link(source: Path, target: Path, link: bool) -> None:
    if link:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy instead
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        raise DataError(f"{source}: cannot copy image ({exc.strerror or exc})") from None


def text_number(value: float) -> str:
    """The shortest text that reads back as the same float32 (``30`` for 30.0, ``0.3``)."""
    return np.format_float_positional(np.float32(value), trim="-")


def normalised(value: float) -> str:
    """A normalised coordinate with 10 decimals (trailing zeros dropped): below 1e-3 px of error
    for images up to millions of pixels wide."""
    text = f"{float(value):.10f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def merge_classes(parts: dict[str, Annotations]) -> dict[str, Annotations]:
    """The splits with one class list: the shared one, else the union (sorted when every split's
    list is sorted, else in order of first appearance), labels renumbered to it."""
    lists = [a.classes for a in parts.values()]
    if all(c == lists[0] for c in lists):
        return parts
    merged = list(dict.fromkeys(name for names in lists for name in names))
    if all(names == sorted(names) for names in lists):
        merged = sorted(merged)
    index = {name: i for i, name in enumerate(merged)}
    result = {}
    for split, part in parts.items():
        remap = np.array([index[n] for n in part.classes], dtype=np.int32)
        records = [
            Record(r.filename, r.width, r.height, r.boxes, remap[r.labels], r.difficult,
                   image_id=r.image_id)
            for r in part.records
        ]  # fmt: skip
        result[split] = Annotations(classes=merged, records=records)
    return result


def class_name(classes: list[str], label: int) -> str:
    """The name of ``label``; DataError for a label past the class list."""
    if not 0 <= int(label) < len(classes):
        raise DataError(f"label id {int(label)} is past the {len(classes)} classes")
    return classes[int(label)]
