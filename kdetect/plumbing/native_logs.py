"""Native (C++) log lines kept off the console, unless asked for.

TensorFlow writes its own lines straight to the process's stderr, below Python: "oneDNN custom
operations are on", "Could not find cuda drivers", "failed call to cuInit ... (303)" on a
machine without a GPU at start-up, more during training ("oneDNN supports DT_INT64 only ..."),
and LiteRT adds "Created TensorFlow Lite XNNPACK delegate". They are not kdetect's, and a
newcomer reads "error" in them.

The ``kdetect`` program therefore runs with :func:`filter_native_stderr`: file descriptor 2,
where native code writes, becomes a pipe read by a thread that drops those lines
(:data:`NATIVE_LINE`) and passes everything else on (a native crash report still shows), while
Python's ``sys.stderr`` (kdetect's messages, rich progress, tracebacks) writes to the terminal
directly, so terminal detection and ordering are unchanged. :func:`native_stderr_silenced`
silences native output around a block (the converters), for Python API users too.
``kdetect --verbose`` or ``KDETECT_DEBUG=1`` lets everything through.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
import threading

#: A native log line: absl / TensorFlow C++ logging ("I0000 00:00:1796.1 123 port.cc:153] ..."),
#: absl's pre-initialisation notice, and the TFLite runtime's INFO lines.
NATIVE_LINE = re.compile(
    r"^([IWEF]\d{4} [\d:.]+\s+\d+ [\w.\-]+:\d+\]"
    r"|WARNING: All log messages before absl::"
    r"|INFO: (Created TensorFlow Lite|Initialized TensorFlow Lite))"
)


def verbose() -> bool:
    """True when the user asked for the frameworks' own logs (``KDETECT_DEBUG``, ``--verbose``)."""
    return bool(os.environ.get("KDETECT_DEBUG") or os.environ.get("KDETECT_VERBOSE"))


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at ``/dev/null`` for the block (unless :func:`verbose`)."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _Filter:
    """The thread between file descriptor 2 (a pipe) and the real stderr."""

    def __init__(self):
        self.original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.reader = os.fdopen(read_end, "rb")
        self.thread = threading.Thread(target=self._pump, name="kdetect-stderr", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self.reader:
            if not NATIVE_LINE.match(line.decode("utf-8", "replace")):
                os.write(self.original, line)

    def close(self) -> None:
        """Put the real stderr back on descriptor 2 and let the thread drain the pipe."""
        sys.stderr.flush()
        os.dup2(self.original, 2)  # closes the pipe's last write end in this process
        self.thread.join(timeout=2.0)
        if not self.thread.is_alive():
            self.reader.close()


_FILTER: _Filter | None = None


def filter_native_stderr() -> None:
    """Drop native log lines from file descriptor 2 for the rest of the process (unless
    :func:`verbose`); ``sys.stderr`` keeps writing to the real stderr."""
    global _FILTER
    if verbose() or _FILTER is not None:
        return
    sys.stderr.flush()
    _FILTER = _Filter()
    sys.stderr = open(  # noqa: SIM115 - lives as long as the process
        os.dup(_FILTER.original),
        "w",
        buffering=1,
        encoding=sys.stderr.encoding,
        errors="backslashreplace",
        closefd=True,
    )
    atexit.register(_FILTER.close)


def allow_native_logs() -> None:
    """``--verbose``: TensorFlow's own log levels, and native lines no longer dropped."""
    os.environ["KDETECT_VERBOSE"] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    if _FILTER is not None:
        _FILTER.close()
