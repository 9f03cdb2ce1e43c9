"""Batches of consecutive images for the model.

The model takes one image size per batch, so :func:`consecutive_batches` groups runs of
consecutive items that share a key (by default the array's shape) into batches of at most
``batch_size``; a new key, or a full batch, starts the next one. The input order is kept and the
items are read lazily (one batch in memory at a time).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, TypeVar

Item = TypeVar("Item")


def _shape(item: Any) -> Hashable:
    return tuple(item.shape)


def consecutive_batches(
    items: Iterable[Item],
    batch_size: int | None = None,
    key: Callable[[Item], Hashable] = _shape,
) -> Iterator[list[Item]]:
    """Yield lists of consecutive ``items`` with equal ``key`` (at most ``batch_size`` each;
    ``None``: no limit)."""
    batch: list[Item] = []
    batch_key: Hashable = None
    for item in items:
        item_key = key(item)
        if batch and (item_key != batch_key or len(batch) == batch_size):
            yield batch
            batch = []
        batch_key = item_key
        batch.append(item)
    if batch:
        yield batch
