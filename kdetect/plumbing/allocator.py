"""Keep freed memory inside the process, so large tensors stop page-faulting on every step.

TensorFlow on CPU allocates each activation of a step with ``malloc`` and frees it when the step
is done. glibc serves blocks above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
gives them back with ``munmap``, and its per-thread arenas can only ``mmap`` blocks larger than
their 64 MiB heaps, so every step touches its activations' pages anew: a ResNet50-FPN training
step at 608x1024 took ~2 million page faults and ~7 s of system time out of ~19 s on 2 cores.

:func:`retain_freed_memory` sets three glibc options (``mallopt``): one arena for all threads, no
``mmap`` for large blocks, and no trimming of the heap below 2 GiB of free space at its top. After
the first step every block is reused from the heap: no page faults, ~25 % faster training steps
on that machine (docs/performance.md). The cost: the process keeps its peak memory until it exits.

The ``kdetect`` program calls it at start-up (set ``KDETECT_MALLOC=system`` to keep glibc's
defaults); Python users can call it first thing, before TensorFlow creates its threads. The
environment variables in :data:`RETAIN_FREED_MEMORY_ENV` do the same for any program started with
them, and preloading tcmalloc has a similar effect.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))

#: The same settings as glibc environment variables, for a process started from outside.
RETAIN_FREED_MEMORY_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(_INT_MAX),
}


def retain_freed_memory() -> bool:
    """Make glibc keep and reuse freed memory; True when the settings were applied.

    Does nothing (returns False) outside Linux/glibc or when ``KDETECT_MALLOC=system``.
    """
    if os.environ.get("KDETECT_MALLOC", "").strip().lower() == "system":
        return False
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
