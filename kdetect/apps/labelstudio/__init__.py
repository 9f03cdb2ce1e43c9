"""Label Studio integration: ``kdetect serve`` as a Label Studio ML backend that pre-labels
tasks and retrains on the project's annotations (docs/labelling.md).

Modules: :mod:`~kdetect.apps.labelstudio.labelconfig` (the project's labels <-> model classes),
:mod:`~kdetect.apps.labelstudio.client` (credentials, authenticated requests, the export),
:mod:`~kdetect.apps.labelstudio.tasks` (a task's image), :mod:`~kdetect.apps.labelstudio.dataset`
(an export -> a CSV dataset), :mod:`~kdetect.apps.labelstudio.training` (fine-tune, compare, switch)
and
:mod:`~kdetect.apps.labelstudio.backend` (the HTTP routes). :func:`attach` is the one call
``kdetect.apps.serve.create_app`` makes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from kdetect.apps.labelstudio.backend import Backend, attach_label_studio
from kdetect.apps.labelstudio.client import Credentials
from kdetect.apps.labelstudio.tasks import ImagePolicy
from kdetect.apps.labelstudio.training import Retrainer, TrainingSettings
from kdetect.runs import load_model

log = logging.getLogger("kdetect.apps.labelstudio")


@dataclass
class LabelStudioOptions:
    """Label Studio URL and key (flags, else env), where retraining writes, which task images
    the server may read."""

    credentials: Credentials = field(default_factory=Credentials.resolve)
    training: TrainingSettings | None = None
    retrain: bool = True
    images: ImagePolicy = field(default_factory=ImagePolicy)  # which task images may be read


def attach(app, predictor, summary: dict, limits, info, options: LabelStudioOptions | None):
    """Add the ML backend to ``app``; retraining when the model is a run with a recipe."""
    options = options or LabelStudioOptions()
    retrainer = None
    if options.retrain and info is not None and info.recipe and info.kind in ("run", "packed"):
        run = Path(info.path)

        def switch(new_run: Path) -> None:
            """Serve the retrained run: its model in the predictor, its name as the version."""
            model, classes = load_model(new_run)
            predictor.replace(model, classes)
            summary["name"] = new_run.name
            log.info("now serving %s (model_version %s)", new_run, new_run.name)

        settings = options.training or TrainingSettings.beside(run)
        retrainer = Retrainer(run, options.credentials, limits, settings, switch)
    backend = Backend(predictor, summary, limits, options.credentials, retrainer, options.images)
    attach_label_studio(app, backend)
    return backend


__all__ = ["Credentials", "ImagePolicy", "LabelStudioOptions", "TrainingSettings", "attach"]
