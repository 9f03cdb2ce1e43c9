"""The training engine: a recipe to a run directory, and the evaluation of runs.

* :func:`train` - build data, model, optimizer and callbacks, call ``fit()``; returns the run
  directory (TensorFlow is imported once the recipe and the run directory have been checked).
* :class:`Trainer` - one run's steps, in order; a subclass changes some of them
  (``train(recipe, trainer=MyTrainer)``).
* :mod:`~kdetect.engine.evaluate_run` - evaluate a trained run, or each checkpoint as it
  appears.
* Recipes themselves are :mod:`kdetect.config`; run directories and packed runs (``.kdet``)
  :mod:`kdetect.runs`.
"""

import importlib

from kdetect.engine.training import train

__all__ = ["Trainer", "train"]


def __getattr__(name):
    # The trainer imports Keras and TensorFlow: loaded on first use (``kdetect.engine.train``
    # checks a recipe and its run directory before that).
    if name == "Trainer":
        return importlib.import_module("kdetect.engine.fitting").Trainer
    raise AttributeError(f"module 'kdetect.engine' has no attribute {name!r}")
