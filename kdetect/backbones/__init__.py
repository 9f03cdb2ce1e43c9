"""Backbones: the networks a detector's features come from (:mod:`~kdetect.backbones.networks`)
and their names and settings, importable without TensorFlow (:mod:`~kdetect.backbones.names`)."""
