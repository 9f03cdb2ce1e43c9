"""Fixtures shared by the tests (plain helper functions are in tests/helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_detector():
    """One ``TINY`` detector per test module (tests that train build their own)."""
    # Imported here, not at the top: every test session loads this file, and the tests of
    # start-up time and of ``import kdetect`` must not find TensorFlow already imported.
    from tests.helpers import tiny_model

    return tiny_model()
