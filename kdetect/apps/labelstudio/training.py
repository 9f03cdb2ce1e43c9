"""Retraining the served detector on a Label Studio project's annotations.

One retraining, in a background thread of the server (or in the foreground for
``kdetect labelstudio train``):

1. ``exporting``: the project's annotated tasks through Label Studio's export API;
2. ``downloading``: their images, written as a CSV dataset with a held-out ``val`` split
   (:mod:`kdetect.apps.labelstudio.dataset`);
3. ``training``: ``kdetect train`` in a subprocess (so predictions never wait) on the served
   run's own recipe, with ``data`` pointed at that dataset, ``data.classes`` fixed to the model's
   classes and ``train.init_from`` the served run: a fine-tune;
4. ``evaluating``: the served and the new model on the held-out split with
   :func:`kdetect.evaluation.evaluate_model` (the recipe's ``eval.metric``);
5. ``switched`` when the new one scores no worse (the server then serves it and its run name is
   the new ``model_version``), else ``kept``; ``failed`` with the reason on any error.

Progress (state, epochs done of the new run) and the last result are in :meth:`status`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kdetect.apps.labelstudio.client import ENV_KEY, Credentials, LabelStudioClient
from kdetect.apps.labelstudio.dataset import write_dataset
from kdetect.apps.labelstudio.labelconfig import LabelConfig, LabelMap
from kdetect.apps.uploads import Limits
from kdetect.evaluation import METRICS, evaluate_model, headline, load_ground_truth
from kdetect.plumbing.errors import KdetectError
from kdetect.plumbing.paths import run_around
from kdetect.runs import PACK_SUFFIX, inspect_run, load_model
from kdetect.runs.files import read_history

log = logging.getLogger("kdetect.apps.labelstudio")


@dataclass
class TrainingSettings:
    """Where retraining writes (datasets, runs, logs) and what it adds to the recipe."""

    work_dir: Path
    overrides: list[str] = field(default_factory=list)
    val_fraction: float = 0.25

    @staticmethod
    def beside(run: Path, overrides: list[str] | None = None) -> TrainingSettings:
        """The default: ``<run>-labelstudio/`` next to the served run; for a served model file
        inside a run (``RUN/checkpoints/best.keras``), next to that run, never inside it."""
        run = Path(run)
        anchor = run_around(run) or run
        return TrainingSettings(anchor.parent / f"{anchor.name}-labelstudio", list(overrides or []))


def run_version(run: Path) -> str:
    """The ``model_version`` of a run: its name (a packed run's without ``.kdet``)."""
    return Path(run).name.removesuffix(PACK_SUFFIX)


def fine_tune_overrides(dataset: Path, classes: list[str], init_from: Path) -> list[str]:
    """``--set`` values that turn a run's recipe into a fine-tune on a CSV dataset."""
    return [
        "data.format=csv",
        f"data.root={json.dumps(str(dataset))}",
        "data.train_split=train",
        "data.val_split=val",
        f"data.classes={json.dumps(list(classes))}",
        f"train.init_from={json.dumps(str(init_from))}",
    ]


def train_command(recipe: Path, run_dir: Path, overrides: list[str]) -> list[str]:
    """The ``kdetect train`` command line (this Python, ``-m kdetect``)."""
    command = [sys.executable, "-m", "kdetect", "train", str(recipe), "--run-dir", str(run_dir)]
    for item in overrides:
        command += ["--set", item]
    return command


def score_run(run: Path, dataset: Path, metric: str) -> float:
    """The headline ``metric`` of ``run``'s model on ``dataset``'s ``val`` split."""
    model, classes = load_model(run)
    truth = load_ground_truth(dataset, "csv", "val", classes=list(classes), on_invalid_box="clip")
    return headline(evaluate_model(model, truth, metric=metric, progress=False))


class Retrainer:
    """One retraining at a time; ``switch(run_dir)`` is called when a new model wins."""

    def __init__(
        self,
        run: Path,
        credentials: Credentials,
        limits: Limits,
        settings: TrainingSettings,
        switch: Callable[[Path], None] | None = None,
    ):
        self.run = Path(run)
        self.credentials = credentials
        self.limits = limits
        self.settings = settings
        self.switch = switch
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state: dict = {"state": "idle", "model_version": run_version(self.run), "last": None}

    def status(self) -> dict:
        """State, progress of the running training and the last finished result."""
        with self._lock:
            state = dict(self._state)
        new_run = state.get("run")
        if state["state"] == "training" and new_run:
            state["epochs_done"] = len(read_history(Path(new_run) / "history.csv"))
        return state

    def _update(self, **values) -> None:
        with self._lock:
            self._state.update(values)
        if "state" in values:
            log.info("retraining: %s", {k: v for k, v in values.items() if k != "last"})

    def start(self, project: int, config: LabelConfig, labels: LabelMap) -> None:
        """Begin retraining in a background thread (RuntimeError while one is running)."""
        self.credentials.require()
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise RuntimeError(f"a retraining is already running ({self._state['state']})")
            self._state.update(state="starting", project=project, started=time.time())
            self._thread = threading.Thread(
                target=self.run_once, args=(project, config, labels), daemon=True
            )
            self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self, project: int, config: LabelConfig, labels: LabelMap) -> dict:
        """Steps 1-5 of the module docstring; returns (and records) the result."""
        try:
            result = self._retrain(project, config, labels)
        except (KdetectError, OSError, subprocess.SubprocessError) as exc:
            result = {"outcome": "failed", "error": str(exc), "project": project}
        except Exception as exc:  # a bug: recorded, so the server keeps serving
            log.exception("retraining failed")
            result = {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}"}
        result["finished"] = time.time()
        self._update(state=result["outcome"], last=result, model_version=run_version(self.run))
        return result

    def _next_run_dir(self) -> Path:
        """``<work_dir>/<base>-lsN``: the first free N, ``base`` the run's name without -lsN."""
        work = self.settings.work_dir
        work.mkdir(parents=True, exist_ok=True)
        base = re.sub(r"-ls\d+$", "", run_version(self.run))
        number = 1
        while (work / f"{base}-ls{number}").exists():
            number += 1
        return work / f"{base}-ls{number}"

    def _retrain(self, project: int, config: LabelConfig, labels: LabelMap) -> dict:
        client = LabelStudioClient(self.credentials)
        self._update(state="exporting", error=None)
        tasks = client.export_tasks(project)
        new_run = self._next_run_dir()
        dataset = new_run.with_name(new_run.name + "-data")
        self._update(state="downloading", tasks=len(tasks))
        info = write_dataset(
            tasks, config, labels, client, dataset, self.limits, self.settings.val_fraction
        )
        info_dict = {
            "train": info.train,
            "val": info.val,
            "boxes": info.boxes,
            "skipped_regions": info.skipped_regions,
            "dataset": str(dataset),
        }
        served = inspect_run(self.run)
        recipe = dataset / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(served.recipe or {}, sort_keys=False))
        overrides = fine_tune_overrides(dataset, served.classes or [], self.run)
        self._update(state="training", run=str(new_run), dataset=info_dict)
        self._train(recipe, new_run, overrides + self.settings.overrides)
        self._update(state="evaluating")
        metric = ((served.recipe or {}).get("eval") or {}).get("metric", "voc07")
        metric = metric if metric in METRICS else "voc07"
        old, new = score_run(self.run, dataset, metric), score_run(new_run, dataset, metric)
        result = {
            "project": project,
            "run": str(new_run),
            "metric": metric,
            "served_score": old,
            "new_score": new,
            "dataset": info_dict,
            "previous_version": run_version(self.run),
        }
        if new < old:
            return {**result, "outcome": "kept", "model_version": run_version(self.run)}
        if self.switch is not None:
            self.switch(new_run)
        self.run = new_run
        return {**result, "outcome": "switched", "model_version": new_run.name}

    def _train(self, recipe: Path, run_dir: Path, overrides: list[str]) -> None:
        """``kdetect train`` in a subprocess, output to ``<run>.log``; error on failure."""
        env = {k: v for k, v in os.environ.items() if k != ENV_KEY}
        log_path = run_dir.with_name(run_dir.name + ".log")
        with open(log_path, "wb") as out:
            code = subprocess.run(
                train_command(recipe, run_dir, overrides),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
            ).returncode
        self._update(log=str(log_path))
        if code != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            raise KdetectError(f"kdetect train exited with {code}: {tail[0]} (log: {log_path})")
