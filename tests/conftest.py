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


#: Modules whose tests train detectors to accuracy, run torchvision beside kdetect on real
#: photos, or start servers, browsers and worker processes: most of the suite's time.
#: ``make test`` (the README's test command) leaves these out (``pytest -m "not slow"``);
#: ``make test-slow`` runs only them, ``make test-all`` everything.
SLOW_MODULES = {
    "test_benchmarks",
    "test_dense_parity",
    "test_distribute",
    "test_family_commands",
    "test_family_imports",
    "test_labelstudio_live",
    "test_loss_parity",
    "test_pretrained_cli",
    "test_pretrained_parity",
    "test_resume_equality",
    "test_run_lifecycle",
    "test_serve_live",
    "test_ssd_parity",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
