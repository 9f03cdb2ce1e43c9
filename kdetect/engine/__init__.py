"""The training engine: a recipe to a run directory, and the evaluation of runs.

* :func:`train` - build data, model, optimizer and callbacks, call ``fit()``; returns the run
  directory (TensorFlow is imported once the recipe and the run directory have been checked).
* :mod:`~kdetect.engine.evaluate_run` - evaluate a trained run, or each checkpoint as it
  appears.
* Recipes themselves are :mod:`kdetect.config`; run directories and packed runs (``.kdet``)
  :mod:`kdetect.runs`.
"""

from kdetect.engine.training import train

__all__ = ["train"]
