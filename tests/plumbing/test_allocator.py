"""kdetect.plumbing.allocator: after retain_freed_memory, a freed large block is reused without
faults."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# Allocate, touch and free a 64 MiB block ten times; print the page faults of rounds 2-10.
SCRIPT = r"""
import ctypes, resource, sys
from kdetect.plumbing.allocator import retain_freed_memory
applied = retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20
def round_trip():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    round_trip()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(**env) -> tuple[str, int]:
    full_env = {**os.environ, **env}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=full_env, check=True
    )
    applied, faults = out.stdout.split()
    return applied, int(faults)


def test_freed_blocks_are_reused_without_page_faults():
    applied, faults = _run(KDETECT_MALLOC="retain")
    assert applied == "True"
    assert faults < 1000  # nine 64 MiB rounds would be ~147 000 faults of 4 KiB pages


def test_opt_out_keeps_glibc_defaults_which_fault_on_every_round():
    applied, faults = _run(KDETECT_MALLOC="system")
    assert applied == "False"
    assert faults > 9 * 10000  # each round maps fresh pages


def test_the_environment_variables_have_the_same_effect():
    from kdetect.plumbing.allocator import RETAIN_FREED_MEMORY_ENV

    applied, faults = _run(KDETECT_MALLOC="system", **RETAIN_FREED_MEMORY_ENV)
    assert applied == "False"  # nothing set from Python: glibc read the variables at start-up
    assert faults < 1000
