"""Packed runs (``.kdet``): a flat zip of a run's files, read within limits against zip bombs.

What a packed run may expand to is checked from the zip's declared sizes before anything is
read, and again byte by byte while extracting, since declared sizes can lie: at most
MAX_PACK_BYTES in all, at most MAX_PACK_RATIO times its compressed size for a member of more
than RATIO_FREE_BYTES, and MAX_META_BYTES for the small files read into memory.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import yaml

from kdetect.plumbing.errors import CheckpointError
from kdetect.plumbing.parsing import load_yaml
from kdetect.runs.files import (
    CLASSES_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PACK_META,
    RECIPE_FILE,
    RunInfo,
)

MAX_PACK_BYTES = 8 * 2**30
MAX_PACK_RATIO = 100
RATIO_FREE_BYTES = 2**20
MAX_META_BYTES = 64 * 2**20


def is_pack(path: Path) -> bool:
    """Whether ``path`` is a zip holding kdetect's pack metadata."""
    try:
        with zipfile.ZipFile(path) as zf:
            return PACK_META in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def check_pack_sizes(zf: zipfile.ZipFile, path: Path) -> None:
    """Refuse a packed run whose declared sizes pass the limits above (a zip bomb)."""
    total = 0
    for info in zf.infolist():
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FREE_BYTES and ratio > MAX_PACK_RATIO:
            raise CheckpointError(
                f"{path}: {info.filename} would expand {ratio:.0f} times "
                f"(limit {MAX_PACK_RATIO}); refusing a possible zip bomb"
            )
    if total > MAX_PACK_BYTES:
        raise CheckpointError(
            f"{path}: would expand to {total / 2**20:.1f} MiB, over the limit of "
            f"{MAX_PACK_BYTES / 2**20:g} MiB"
        )


def copy_member(zf: zipfile.ZipFile, name: str, dst, limit: int, path: Path) -> int:
    """Stream one member into ``dst``; at most its declared size and ``limit`` bytes."""
    info = zf.getinfo(name)
    limit = min(limit, info.file_size)
    written = 0
    with zf.open(info) as src:
        while chunk := src.read(2**20):
            written += len(chunk)
            if written > limit:
                raise CheckpointError(
                    f"{path}: {name} expands past its declared size or the limit "
                    f"({limit} bytes); refusing a possible zip bomb"
                )
            dst.write(chunk)
    return written


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    buffer = io.BytesIO()
    copy_member(zf, name, buffer, MAX_META_BYTES, path)
    return buffer.getvalue()


def inspect_pack(path: Path) -> RunInfo:
    """Describe a packed run from its small members (the model stays inside)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if PACK_META not in names or MODEL_FILE not in names:
                raise CheckpointError(f"{path}: not a kdetect packed run (no {PACK_META})")
            check_pack_sizes(zf, path)

            def read(name: str) -> bytes | None:
                return _read_member(zf, name, path) if name in names else None

            meta = json.loads(read(PACK_META))
            classes = json.loads(read(CLASSES_FILE) or "null")
            text = (read(RECIPE_FILE) or b"").decode("utf-8")
            recipe = load_yaml(text, f"{path}: {RECIPE_FILE}", CheckpointError) or None
            metrics = json.loads(read(METRICS_FILE) or "null")
    except (zipfile.BadZipFile, ValueError, yaml.YAMLError, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt packed run ({exc})") from None
    if isinstance(classes, dict):
        classes = classes.get("classes")
    return RunInfo(
        path=path,
        kind="packed",
        model_path=None,
        classes=classes,
        recipe=recipe,
        metrics=metrics,
        meta=meta,
    )


def extract_member(path: Path, name: str, target: Path, limit: int | None = None) -> None:
    """Write member ``name`` of the packed run ``path`` to ``target``, within ``limit`` bytes
    (default MAX_PACK_BYTES, read when called so that it can be lowered)."""
    limit = MAX_PACK_BYTES if limit is None else limit
    try:
        with zipfile.ZipFile(path) as zf, target.open("wb") as dst:
            copy_member(zf, name, dst, limit, path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: corrupt packed run ({exc})") from None
