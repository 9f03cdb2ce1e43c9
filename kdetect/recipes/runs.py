"""Deprecated alias of :mod:`kdetect.runs` (run directories moved there); kept for
one release so that ``from kdetect.recipes.runs import load_model`` keeps working."""

import warnings

from kdetect.runs import *  # noqa: F403
from kdetect.runs import __all__  # noqa: F401

warnings.warn(
    "kdetect.recipes.runs is deprecated; import kdetect.runs instead",
    DeprecationWarning,
    stacklevel=2,
)
