"""Label Studio's ML backend protocol on the kdetect server (``label-studio-ml``'s routes).

``GET /health``       ``{"status": "UP", "model_class": ..., "model_version": ...}``
``POST /setup``       the project's label config (``schema``): labels mapped to model classes
``POST /predict``     tasks in, ``{"results": [{"result": [regions], "score", "model_version"}]}``
``POST /webhook``     ``START_TRAINING`` starts a retraining; annotation events are acknowledged
``POST /train``       the older training call (same as ``START_TRAINING``)
``GET /api/labelstudio/training``   the retraining's progress and last result

Predictions come from the server's :class:`~kdetect.apps.serve.app.Predictor` (the same
``kdetect.apps.predict.Detector`` as ``kdetect predict``); each detection becomes a
``rectanglelabels`` region with :func:`kdetect.data.labelstudio.region_from_box`, its class
renamed to the project's label. Classes without a label in the project are not sent.

A task whose image cannot be read is a 422 that names the task and the image as given; why (no
such file, no permission, a refused connection) goes to the server's log only. Which paths and
URLs may be read is the server's :class:`~kdetect.apps.labelstudio.tasks.ImagePolicy`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from kdetect.apps.labelstudio.client import Credentials, LabelStudioClient, LabelStudioError
from kdetect.apps.labelstudio.labelconfig import (
    LabelConfig,
    LabelConfigError,
    LabelMap,
    map_labels,
    parse_label_config,
)
from kdetect.apps.labelstudio.tasks import ImagePolicy, ImageReadError, TaskError, load_task_image
from kdetect.apps.labelstudio.training import Retrainer
from kdetect.apps.uploads import Limits
from kdetect.data.labelstudio import region_from_box

log = logging.getLogger("kdetect.apps.labelstudio")
TRAIN_EVENTS = ("START_TRAINING",)
MAX_CACHED_CONFIGS = 64
ACKNOWLEDGED_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED")


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class SetupRequest(_Loose):
    project: str | int | None = Field(None, description="'<id>.<created timestamp>'")
    schema_: str = Field(alias="schema", description="the project's label config (XML)")
    extra_params: dict[str, Any] | str | None = None


class PredictRequest(_Loose):
    tasks: list[dict[str, Any]]
    label_config: str | None = None
    project: str | int | None = None
    params: dict[str, Any] | None = None


class WebhookRequest(_Loose):
    action: str
    project: dict[str, Any] | None = None


def project_id(value) -> int | None:
    """Label Studio's ``"<id>.<timestamp>"`` project uid (or a plain id) -> the id."""
    if value is None or value == "":
        return None
    try:
        return int(str(value).split(".", 1)[0])
    except ValueError:
        raise HTTPException(400, f"project: expected '<id>.<timestamp>', got {value!r}") from None


def _min_score(extra_params) -> float | None:
    """``min_score`` of the ML backend's extra params (a dict or its JSON text), 0-1."""
    if isinstance(extra_params, str):
        try:
            extra_params = json.loads(extra_params) if extra_params.strip() else {}
        except ValueError:
            raise HTTPException(400, "extra_params: not a JSON object") from None
    if not isinstance(extra_params, dict) or extra_params.get("min_score") is None:
        return None
    value = extra_params["min_score"]
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise HTTPException(400, f"extra_params.min_score: expected 0..1, got {value!r}")
    return float(value)


class Backend:
    """The state behind the routes: parsed label configs, the served version, the retrainer."""

    def __init__(
        self,
        predictor,
        summary: dict,
        limits: Limits,
        credentials: Credentials,
        retrainer: Retrainer | None,
        images: ImagePolicy | None = None,
    ):
        self.predictor = predictor
        self.images = images or ImagePolicy()
        self.summary = summary
        self.limits = limits
        self.credentials = credentials
        self.retrainer = retrainer
        self.projects: dict[int, str] = {}
        self.min_scores: dict[int, float] = {}
        self._parsed: dict[str, tuple[LabelConfig, LabelMap]] = {}
        self._client: LabelStudioClient | None = None

    @property
    def model_version(self) -> str:
        return str(self.summary["name"])

    def client(self) -> LabelStudioClient | None:
        """One client for every request (it keeps the access token), ``None`` without a key."""
        if self._client is None and self.credentials.url and self.credentials.key:
            try:
                self._client = LabelStudioClient(self.credentials)
            except LabelStudioError as exc:
                raise HTTPException(400, str(exc)) from None
        return self._client

    def label_config(self, xml: str | None, project: int | None) -> tuple[LabelConfig, LabelMap]:
        """The parsed config (cached by its text) and its label map; 400 when unusable."""
        xml = xml or self.projects.get(project)
        if xml is not None and not isinstance(xml, str):
            raise HTTPException(400, "label_config: expected the XML text")
        if not xml:
            raise HTTPException(400, "no label config: send label_config or POST /setup first")
        if xml not in self._parsed:
            if len(self._parsed) >= MAX_CACHED_CONFIGS:  # a few projects; never unbounded
                self._parsed.clear()
            try:
                config = parse_label_config(xml)
            except LabelConfigError as exc:
                raise HTTPException(400, str(exc)) from None
            self._parsed[xml] = (config, map_labels(config.labels, self.predictor.classes))
        return self._parsed[xml]

    def setup(self, body: SetupRequest) -> dict:
        project = project_id(body.project)
        config, labels = self.label_config(body.schema_, None)
        min_score = _min_score(body.extra_params)
        if project is not None:
            self.projects[project] = body.schema_
            if min_score is not None:
                self.min_scores[project] = min_score
        level = logging.WARNING if labels.unknown else logging.INFO
        log.log(level, "Label Studio project %s: %s", project, labels.message())
        return {
            "model_version": self.model_version,
            "labels": labels.to_class,
            "unknown_labels": labels.unknown,
            "message": labels.message(),
        }

    def predict_one(
        self, task: dict, config: LabelConfig, labels: LabelMap, client, min_score: float
    ) -> dict:
        """One task -> one prediction: its image's detections as regions in percent."""
        image, _ = load_task_image(task, config.image_key, client, self.limits, self.images)
        height, width = image.shape[:2]
        to_label = labels.to_label
        regions = []
        for obj in self.predictor.predict(image, min_score):
            if obj["label"] not in to_label:
                continue
            region = region_from_box(
                obj["bbox"],
                to_label[obj["label"]],
                width,
                height,
                score=obj["score"],
                from_name=config.from_name,
                to_name=config.to_name,
            )
            region["id"] = f"kdetect{len(regions)}"
            regions.append(region)
        score = sum(r["score"] for r in regions) / len(regions) if regions else 0.0
        return {"result": regions, "score": score, "model_version": self.model_version}

    def predict(self, body: PredictRequest) -> dict:
        project = project_id(body.project)
        config, labels = self.label_config(body.label_config, project)
        min_score = self.min_scores.get(project, self.summary["min_score"])
        client = self.client()
        results = []
        for task in body.tasks:
            try:
                results.append(self.predict_one(task, config, labels, client, min_score))
            except ImageReadError as exc:  # the client learns nothing of the server's files
                log.warning("%s", exc)
                raise HTTPException(422, exc.public) from None
            except (TaskError, LabelStudioError) as exc:
                raise HTTPException(422, str(exc)) from None
        return {"results": results}

    def start_training(self, project: int | None, label_config: str | None) -> dict:
        if self.retrainer is None:
            raise HTTPException(409, "retraining is off (it needs --workers 1 and a run directory)")
        if project is None:
            raise HTTPException(400, "project: missing (which Label Studio project to train on)")
        config, labels = self.label_config(label_config, project)
        try:
            self.retrainer.start(project, config, labels)
        except LabelStudioError as exc:
            raise HTTPException(400, str(exc)) from None
        except RuntimeError as exc:
            raise HTTPException(409, str(exc)) from None
        return self.retrainer.status()


def attach_label_studio(app: FastAPI, backend: Backend) -> None:
    """Add the ML backend routes to ``app`` (see the module docstring)."""
    app.state.label_studio = backend

    @app.get("/health", tags=["label-studio"])
    def health():
        """Label Studio's health check of an ML backend."""
        return {"status": "UP", "model_class": "kdetect", "model_version": backend.model_version}

    @app.post("/setup", tags=["label-studio"])
    def setup(body: SetupRequest):
        """Label Studio connects a project: parse its labels, map them to the model's classes."""
        return backend.setup(body)

    @app.post("/predict", tags=["label-studio"])
    async def predict(body: PredictRequest):
        """Pre-label tasks: one prediction (regions in percent, with scores) per task."""
        return await run_in_threadpool(backend.predict, body)

    @app.post("/webhook", tags=["label-studio"], status_code=201)
    def webhook(body: WebhookRequest):
        """Label Studio's events: ``START_TRAINING`` retrains, others are acknowledged."""
        if body.action in TRAIN_EVENTS:
            project = body.project or {}
            status = backend.start_training(
                project_id(project.get("id")), project.get("label_config")
            )
            return {"status": "ok", "result": status}
        known = body.action in ACKNOWLEDGED_EVENTS
        return {"status": "ok" if known else "Unknown event", "result": None}

    @app.post("/train", tags=["label-studio"], status_code=201)
    def train(body: _Loose):
        """The older training call: ``{"project": "<id>.<ts>", "label_config": ...}``."""
        data = body.model_dump()
        status = backend.start_training(project_id(data.get("project")), data.get("label_config"))
        return {"status": "ok", "result": status}

    @app.get("/api/labelstudio/training", tags=["label-studio"])
    def training():
        """The retraining's state, progress (epochs) and last result."""
        if backend.retrainer is None:
            return {"state": "off", "model_version": backend.model_version}
        return backend.retrainer.status()
