"""Configuration: recipes, YAML files that describe a detector, its data and its training.

* :func:`load` - read, override (``--set``) and validate a recipe file into a :class:`Recipe`
  (:mod:`~kdetect.config.schema` holds every key, its type, default and meaning).
* :func:`dump` - write a recipe back as YAML.
* :mod:`~kdetect.config.builders` - recipe values as the keyword arguments of a detector.

Training a recipe is :func:`kdetect.engine.train`.
"""

from kdetect.config.loader import apply_overrides, dump, load
from kdetect.config.schema import Recipe, iter_keys

__all__ = ["Recipe", "apply_overrides", "dump", "iter_keys", "load"]
