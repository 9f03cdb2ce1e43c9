"""Run directories and packed runs: find the model, classes and recipe of a trained detector.

A run directory (written by :func:`kdetect.engine.train`) holds::

    recipe.yaml        the fully resolved recipe
    classes.json       {"classes": [...]}: label id -> name
    model.keras        the final detector (written when training ends)
    kdetect.json       name, version, status (running / interrupted / failed / finished)
    .lock              held (flock) by the process training into the run (runs/lock.py)
    checkpoints/       epoch-NNNN.keras (last K), best.keras, state/ (resume)
    history.csv        one row per epoch
    metrics.json       written by `kdetect evaluate`
    logs/              TensorBoard
    samples/           a few validation images (PNG)

A *packed* run (``.kdet``) is a zip of ``model.keras``, ``classes.json``, ``recipe.yaml``,
``metrics.json`` (when present) and ``kdetect.json`` (metadata); ``predict``, ``evaluate`` and
``serve`` accept it wherever they accept a run directory.

Modules: :mod:`~kdetect.runs.files` (the file names, :class:`RunInfo`, the small files),
:mod:`~kdetect.runs.checkpoints` (complete ``.keras`` files, saving and loading),
:mod:`~kdetect.runs.packs` (reading ``.kdet`` zips within limits), :mod:`~kdetect.runs.catalog`
(inspect, load, list, pack, unpack), :mod:`~kdetect.runs.metrics` (a run's headline number),
:mod:`~kdetect.runs.directory` (a new run directory for training), :mod:`~kdetect.runs.lock`
(one writer per run; a dead writer's ``running`` status reads ``interrupted``).
"""

from kdetect.runs.catalog import (
    best_min_score,
    f1_threshold,
    inspect_run,
    list_runs,
    load_model,
    model_file,
    pack,
    unpack,
)
from kdetect.runs.checkpoints import (
    checkpoint_files,
    checkpoint_problem,
    latest_checkpoint,
    load_keras_file,
    save_keras,
    write_errors,
)
from kdetect.runs.files import (
    BEST_CHECKPOINT,
    CHECKPOINTS_DIR,
    CLASSES_FILE,
    DEFAULT_MIN_SCORE,
    EVAL_WATCH_FILE,
    HISTORY_FILE,
    LABELS_PLOT,
    LEGACY_VAL_MAP_KEY,
    LOGS_DIR,
    METRICS_FILE,
    MODEL_FILE,
    PACK_META,
    PACK_SUFFIX,
    PLOTS_DIR,
    RECIPE_FILE,
    RESULTS_PLOT,
    SAMPLES_DIR,
    STATE_DIR,
    TRAIN_BATCH_PLOT,
    VAL_MAP_KEY,
    RunInfo,
    read_classes,
    write_classes,
)
from kdetect.runs.metrics import best_metric
from kdetect.runs.packs import (
    MAX_META_BYTES,
    MAX_PACK_BYTES,
    MAX_PACK_RATIO,
    RATIO_FREE_BYTES,
    check_pack_sizes,
)

__all__ = [
    "BEST_CHECKPOINT",
    "CHECKPOINTS_DIR",
    "CLASSES_FILE",
    "DEFAULT_MIN_SCORE",
    "EVAL_WATCH_FILE",
    "HISTORY_FILE",
    "LABELS_PLOT",
    "LEGACY_VAL_MAP_KEY",
    "LOGS_DIR",
    "MAX_META_BYTES",
    "MAX_PACK_BYTES",
    "MAX_PACK_RATIO",
    "METRICS_FILE",
    "MODEL_FILE",
    "PACK_META",
    "PACK_SUFFIX",
    "PLOTS_DIR",
    "RATIO_FREE_BYTES",
    "RECIPE_FILE",
    "RESULTS_PLOT",
    "SAMPLES_DIR",
    "STATE_DIR",
    "TRAIN_BATCH_PLOT",
    "VAL_MAP_KEY",
    "RunInfo",
    "best_metric",
    "best_min_score",
    "f1_threshold",
    "check_pack_sizes",
    "checkpoint_files",
    "checkpoint_problem",
    "inspect_run",
    "latest_checkpoint",
    "list_runs",
    "load_keras_file",
    "load_model",
    "model_file",
    "pack",
    "read_classes",
    "save_keras",
    "unpack",
    "write_classes",
    "write_errors",
]
