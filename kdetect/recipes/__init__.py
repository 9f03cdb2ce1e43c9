"""Recipes: YAML files that describe a detector, its data and its training, and what runs them.

* :func:`load` - read, override (``--set``) and validate a recipe file into a :class:`Recipe`.
* :func:`train` - build data, model, optimizer and callbacks, call ``fit()``; returns the run
  directory.
* :mod:`kdetect.recipes.runs` - run directories and packed runs (``.kdet``).
"""

from kdetect.recipes.loader import apply_overrides, dump, load
from kdetect.recipes.schema import Recipe, iter_keys

__all__ = ["Recipe", "apply_overrides", "dump", "iter_keys", "load", "train"]


def train(recipe, run_dir=None, resume=False, overrides=None, callbacks=None, console=None):
    """Train a recipe and return the run directory (see :func:`kdetect.recipes.training.train`)."""
    from kdetect.recipes.training import train as _train

    return _train(
        recipe,
        run_dir=run_dir,
        resume=resume,
        overrides=overrides,
        callbacks=callbacks,
        console=console,
    )
