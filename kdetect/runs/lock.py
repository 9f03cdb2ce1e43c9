"""The lock of a run directory: one process at a time trains into it.

``kdetect train`` (and ``--resume``) holds an exclusive ``flock`` on ``RUN_DIR/.lock`` for as long
as it writes the run, and writes its pid, host and start time into that file. The kernel releases
the lock when the process ends, however it ends (SIGKILL, a crash, a lost container), so a dead
process never keeps it. That is also how a run's liveness is known: a ``running`` status in
``kdetect.json`` whose lock nobody holds belongs to a process that died before it could record
its end, and :func:`effective_status` reports it as ``interrupted``.

Readers (``evaluate``, ``predict``, ``checkpoint info``) never take the lock. On platforms without
``fcntl`` (Windows) there is no lock and a ``running`` status is taken at its word.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kdetect.plumbing.errors import RunLockedError
from kdetect.runs.files import read_meta

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LOCK_FILE = ".lock"
#: A reader's probe (:func:`lock_holder`) holds a shared lock for microseconds; a writer that
#: meets one tries again this many times, 0.05 s apart, before it reports the run as busy.
_TRIES = 20


def _holder_info(fd: int) -> dict[str, Any]:
    """What the holder wrote into the lock file (pid, host, started); empty when unreadable."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def lock_holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The live process holding ``run_dir``'s lock (``{"pid", "host", "started"}``, possibly
    empty), or ``None`` when no process holds it (none ever did, or it died)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_info(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def effective_status(run_dir: str | os.PathLike, meta: dict[str, Any] | None = None) -> str:
    """The run's status: ``kdetect.json``'s, except that ``running`` without a live lock holder
    is ``interrupted`` (the training process was killed before it could record its end)."""
    status = str((read_meta(Path(run_dir)) if meta is None else meta).get("status", ""))
    if status == "running" and fcntl is not None and lock_holder(run_dir) is None:
        return "interrupted"
    return status


def _busy(run_dir: Path, fd: int) -> RunLockedError:
    info = _holder_info(fd)
    who = f"process {info['pid']}" if info.get("pid") else "another process"
    if info.get("host") and info.get("host") != socket.gethostname():
        who += f" on {info['host']}"
    return RunLockedError(
        f"{run_dir}: {who} is training into this run directory; wait for it to end (or stop "
        "it) or choose another --run-dir"
    )


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block runs (creating the folder when missing).

    Raises :class:`RunLockedError` (one line, the holder's pid) when a live process holds it;
    nothing is written then. A folder this call created and the block left empty is removed.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for attempt in range(_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _TRIES - 1:
                    raise _busy(run_dir, fd) from None
                time.sleep(0.05)  # perhaps a reader's probe, which lets go at once
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    run_dir.rmdir()
    finally:
        os.close(fd)
