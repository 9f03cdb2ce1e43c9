"""``kdetect labelstudio``: retrain a run on a Label Studio project's annotations.

``kdetect serve RUN`` is the ML backend Label Studio connects to (docs/labelling.md); its
Label Studio flags are defined here and shared with ``kdetect labelstudio train``, which runs
the same retraining in the foreground: export, dataset, ``kdetect train`` fine-tune, both models
scored on the held-out split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kdetect.cli import app, err_console
from kdetect.plumbing.paths import check_not_input

labelstudio_app = typer.Typer(
    help="Label Studio: retrain a run on a project's annotations (serve is the ML backend).",
    no_args_is_help=True,
)
app.add_typer(labelstudio_app, name="labelstudio")

LABEL_STUDIO_URL = typer.Option(
    "--label-studio-url",
    help="Label Studio's URL, e.g. http://localhost:8080 (default: $LABEL_STUDIO_URL).",
    show_default=False,
)
LABEL_STUDIO_KEY = typer.Option(
    "--label-studio-key",
    help="Label Studio API key: a Personal Access Token or legacy token "
    "(default: $LABEL_STUDIO_API_KEY). Never logged.",
    show_default=False,
)
RETRAIN_SET = typer.Option(
    "--retrain-set",
    metavar="KEY=VALUE",
    help="Recipe override for retraining, e.g. --retrain-set train.epochs=3. Repeatable.",
)
TRAINING_DIR = typer.Option(
    help="Where retraining writes datasets and runs (default: RUN-labelstudio next to the run)."
)


def label_studio_options(url, key, overrides, training_dir, run: Path):
    """The :class:`~kdetect.apps.labelstudio.LabelStudioOptions` of the flags (env for the rest)."""
    # Deferred: kdetect.apps.labelstudio imports FastAPI, which other commands never need.
    from kdetect.apps.labelstudio import Credentials, LabelStudioOptions, TrainingSettings

    settings = TrainingSettings.beside(run, overrides)
    if training_dir is not None:  # it fills with datasets and runs: never inside a run
        check_not_input(training_dir, [run], "--training-dir", whole=[run])
        settings.work_dir = training_dir
    return LabelStudioOptions(Credentials.resolve(url, key), settings)


@labelstudio_app.command("train")
def train(
    run: Annotated[Path, typer.Argument(help="The run to fine-tune.", show_default=False)],
    project: Annotated[int, typer.Option(help="Label Studio project id.", min=1)],
    url: Annotated[str | None, LABEL_STUDIO_URL] = None,
    key: Annotated[str | None, LABEL_STUDIO_KEY] = None,
    retrain_set: Annotated[list[str] | None, RETRAIN_SET] = None,
    training_dir: Annotated[Path | None, TRAINING_DIR] = None,
) -> None:
    """Fine-tune RUN on PROJECT's annotations; prints both models' scores on held-out tasks."""
    from kdetect.apps.labelstudio.client import LabelStudioClient
    from kdetect.apps.labelstudio.labelconfig import map_labels, parse_label_config
    from kdetect.apps.labelstudio.training import Retrainer
    from kdetect.apps.uploads import Limits
    from kdetect.plumbing.errors import KdetectError
    from kdetect.runs import inspect_run

    info = inspect_run(run)
    if not info.recipe:
        raise KdetectError(f"{run}: no recipe.yaml, so it cannot be fine-tuned")
    options = label_studio_options(url, key, retrain_set, training_dir, Path(info.path))
    client = LabelStudioClient(options.credentials)
    config = parse_label_config(client.project(project).get("label_config", ""))
    labels = map_labels(config.labels, info.classes or [])
    err_console.print(labels.message(), highlight=False)
    retrainer = Retrainer(Path(info.path), options.credentials, Limits(), options.training)
    result = retrainer.run_once(project, config, labels)
    print(json.dumps(result, indent=2))
    if result["outcome"] == "failed":
        raise KdetectError(f"retraining failed: {result['error']}")
