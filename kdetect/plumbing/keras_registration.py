"""Lets ``keras.saving.load_model`` find kdetect's classes after a plain ``import kdetect``.

Keras finds a saved model's custom classes (``kdetect>FasterRCNN`` and the layers) in its
registry, which a class joins when its module is imported; kdetect imports its model code (and
TensorFlow with it) only when first used, so that ``import kdetect`` and ``kdetect --help`` stay
fast. This module bridges the two: Keras' registry lookup is wrapped so that a miss on a
``kdetect>`` name imports every model type (registering everything) and looks
again. The wrap is applied when Keras' registry module is imported, before or after kdetect;
nothing is imported early.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_REGISTRY = "keras.src.saving.object_registration"
_PREFIX = "kdetect>"


def _wrap(registry) -> None:
    """Wrap ``registry.get_registered_object`` (once)."""
    original = registry.get_registered_object
    if getattr(original, "_kdetect", False):
        return

    def get_registered_object(name, custom_objects=None, module_objects=None):
        found = original(name, custom_objects, module_objects)
        if found is None and isinstance(name, str) and name.startswith(_PREFIX):
            importlib.import_module("kdetect.models.registry").register_all()
            found = original(name, custom_objects, module_objects)
        return found

    get_registered_object._kdetect = True
    get_registered_object.__doc__ = original.__doc__
    registry.get_registered_object = get_registered_object


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds Keras' registry module with the normal machinery and wraps it once executed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _REGISTRY:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _wrap(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Wrap Keras' registry now if it is imported, else as soon as it is."""
    if _REGISTRY in sys.modules:
        _wrap(sys.modules[_REGISTRY])
    elif not any(isinstance(finder, _WrapOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WrapOnImport())
