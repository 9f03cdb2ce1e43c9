"""Recipes: YAML files that describe a detector, its data and its training, and what runs them.

* :func:`load` - read, override (``--set``) and validate a recipe file into a :class:`Recipe`.
* :func:`train` - build data, model, optimizer and callbacks, call ``fit()``; returns the run
  directory (TensorFlow is imported once the recipe and the run directory have been checked).
* :mod:`kdetect.recipes.evaluate_run` - evaluate a trained run, or each checkpoint as it appears.
* Run directories and packed runs (``.kdet``) are :mod:`kdetect.runs`.
"""

from kdetect.recipes.loader import apply_overrides, dump, load
from kdetect.recipes.schema import Recipe, iter_keys
from kdetect.recipes.training import train

__all__ = ["Recipe", "apply_overrides", "dump", "iter_keys", "load", "train"]
