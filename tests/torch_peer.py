"""A separate interpreter with PyTorch, for tests that compare against torch or need its files.

torch is never a kdetect dependency, so such tests run torch code in another Python through a
subprocess: ``KDETECT_TORCH_PYTHON`` names that interpreter (default
``<repo>/.venv-torch/bin/python``) and tests skip when it is missing or cannot import torch.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
DEFAULT_TORCH_PYTHON = REPO_ROOT / ".venv-torch" / "bin" / "python"


@functools.cache
def torch_python() -> str | None:
    """Path of a Python that can import torch, or None."""
    python = os.environ.get("KDETECT_TORCH_PYTHON") or str(DEFAULT_TORCH_PYTHON)
    if not os.access(python, os.X_OK):
        return None
    try:
        done = subprocess.run(
            [python, "-c", "import torch"], capture_output=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return python if done.returncode == 0 else None


def require_torch_python() -> str:
    """The torch interpreter, or skip the calling test."""
    python = torch_python()
    if python is None:
        pytest.skip(
            "no Python with torch: set KDETECT_TORCH_PYTHON or create .venv-torch "
            "(pip install torch torchvision)"
        )
    return python


def run_torch(script: str, *args: str | os.PathLike, timeout: float = 1800) -> str:
    """Run ``script`` in the torch interpreter with ``args`` as sys.argv[1:]; return its stdout.
    The script can import this folder's torch-side modules (``tests/torch_side.py``).

    Skips the test when there is no torch interpreter; raises RuntimeError with the script's
    stderr when it fails.
    """
    python = require_torch_python()
    path = os.pathsep.join(filter(None, (str(TESTS), os.environ.get("PYTHONPATH"))))
    done = subprocess.run(
        [python, "-c", script, *map(str, args)],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"torch script failed (exit {done.returncode}):\n{done.stderr}")
    return done.stdout
