"""The FastAPI application of ``kdetect serve``.

Routes:

``GET /``                the page (upload or drop an image, boxes on a canvas, score slider)
``POST /api/predict``    multipart ``image`` (+ optional ``min_score``, ``max_detections``)
``GET /api/health``      liveness
``GET /api/model``       classes, input size, recipe summary
``GET /openapi.json``    the OpenAPI schema (``/docs`` renders it)

The model is loaded once; inference runs in a worker thread behind a lock (one image at a time
per process: TensorFlow already uses every core for one image, so batching requests from a
single process brings little on CPU). Every error is JSON ``{"detail": "message"}`` with a 4xx
status; a bug gives a JSON 500, never a dropped connection.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from kdetect import __version__
from kdetect.apps.labelstudio import ImagePolicy, LabelStudioOptions, attach
from kdetect.apps.predict import Detector
from kdetect.apps.uploads import Limits, UploadError, decode_upload
from kdetect.drawing.visualize import class_color
from kdetect.runs import best_metric, best_min_score, inspect_run, load_model

log = logging.getLogger("kdetect.apps.serve")
STATIC = Path(__file__).parent / "static"
MAX_DETECTIONS_LIMIT = 1000


# --- Response schemas (they become the OpenAPI schema) -------------------------------------
class DetectedObject(BaseModel):
    bbox: list[float] = Field(description="[x1, y1, x2, y2] in pixels of the uploaded image")
    label: str
    label_id: int = Field(description="0-based class id (index into /api/model classes)")
    score: float


class PredictResponse(BaseModel):
    objects: list[DetectedObject]
    width: int
    height: int
    time_ms: float = Field(description="decoding + inference time on the server")


class ErrorResponse(BaseModel):
    detail: str


class HealthResponse(BaseModel):
    status: str
    model: str
    requests: int
    uptime_s: float


class ModelResponse(BaseModel):
    name: str
    classes: list[str]
    colors: list[list[int]] = Field(description="RGB drawing colour of each class")
    image_size: list[int] = Field(description="[height, width] the network runs at")
    backbone: str | None
    fpn: bool | None
    detections_per_img: int | None
    recipe: dict[str, Any] | None
    metric: list[Any] | None = Field(description="[name, value] of the run's best metric")
    limits: dict[str, int]
    min_score: float = Field(
        description="default score threshold: the run's best-F1 one (kdetect evaluate), else 0.5"
    )


ERRORS = {
    400: {"model": ErrorResponse, "description": "not an image, or a truncated image"},
    413: {"model": ErrorResponse, "description": "over the byte or pixel limit"},
    422: {"model": ErrorResponse, "description": "a missing or invalid field"},
}


# --- The model ------------------------------------------------------------------------------
class _Adapter:
    """Gives :class:`~kdetect.apps.predict.Detector` a ``predict_on_batch`` backed by one trace."""

    def __init__(self, model):
        from kdetect.apps.export import detect_function

        self.num_classes = getattr(model, "num_classes", 0)
        self._fn = detect_function(model)

    def predict_on_batch(self, images):
        out = self._fn(np.asarray(images, dtype=np.uint8))
        return {key: value.numpy() for key, value in out.items()}


class Predictor:
    """The loaded detector: thread-safe ``predict(image) -> objects``.

    Args:
        model: a loaded ``FasterRCNN``.
        classes: class names (``class_<i>`` when ``None``).
        warmup: trace the inference function now (a few seconds) instead of on the first request.
    """

    def __init__(self, model, classes: Sequence[str] | None = None, warmup: bool = True):
        self.model = model
        self.detector = Detector(_Adapter(model), classes=classes, min_score=0.0)
        self.classes = self.detector.classes
        self._lock = threading.Lock()
        if warmup:
            self.predict(np.zeros((32, 32, 3), np.uint8))

    def predict(
        self, image: np.ndarray, min_score: float = 0.0, max_detections: int | None = None
    ) -> list[dict]:
        with self._lock:
            objects = self.detector.predict_arrays([image])[0]
        objects = [o for o in objects if o["score"] >= min_score]
        return objects[:max_detections] if max_detections else objects

    def replace(self, model, classes: Sequence[str] | None = None) -> None:
        """Serve ``model`` (a retrained one) from the next request on; traced before the swap."""
        fresh = Predictor(model, classes if classes is not None else self.classes)
        with self._lock:
            self.model, self.detector, self.classes = fresh.model, fresh.detector, fresh.classes


def _model_summary(model, info) -> dict[str, Any]:
    config = model.get_config() if hasattr(model, "get_config") else {}
    recipe = None
    if info is not None and info.recipe:
        data = info.recipe.get("data") or {}
        model_section = info.recipe.get("model") or {}
        train = info.recipe.get("train") or {}
        recipe = {
            "name": info.recipe.get("name"),
            "data_format": data.get("format"),
            # runs before model.image_size kept it under data
            "image_size": model_section.get("image_size", data.get("image_size")),
            "epochs": train.get("epochs"),
            "epochs_done": info.epochs,
        }
    best = best_metric(info) if info is not None else None
    return {
        "name": info.name if info is not None else getattr(model, "name", "model"),
        "image_size": [int(s) for s in getattr(model, "image_size", (0, 0))],
        "backbone": config.get("backbone"),
        "fpn": config.get("fpn"),
        "detections_per_img": config.get("box_detections_per_img"),
        "recipe": recipe,
        "metric": list(best) if best else None,
    }


# --- The application ------------------------------------------------------------------------
def create_app(
    model: Any,
    classes: Sequence[str] | None = None,
    limits: Limits | None = None,
    warmup: bool = True,
    run: str | os.PathLike | None = None,
    label_studio=None,
) -> FastAPI:
    """The ASGI app serving ``model`` (a run directory, ``.keras``/``.kdet`` path or a model).

    ``run`` names the run a loaded ``model`` came from (for ``/api/model``'s recipe summary).
    ``label_studio`` (:class:`kdetect.apps.labelstudio.LabelStudioOptions`, default from the env)
    configures the Label Studio ML backend routes (``/setup``, ``/predict``, ``/webhook``).
    """
    info = inspect_run(run) if run is not None else None
    if isinstance(model, (str, os.PathLike)):
        info = inspect_run(model)
        model, loaded = load_model(model)
        classes = classes if classes is not None else loaded
    limits = limits or Limits()
    predictor = Predictor(model, classes, warmup=warmup)
    summary = _model_summary(model, info)
    summary["classes"] = predictor.classes
    summary["colors"] = [list(class_color(i)) for i in range(len(predictor.classes))]
    summary["limits"] = {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels}
    summary["min_score"] = best_min_score(info)[0]

    app = FastAPI(
        title="kdetect",
        summary=f"Object detection with {summary['name']}",
        version=_version(),
    )
    app.state.predictor = predictor
    app.state.limits = limits
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, limit=limits.max_bytes + ENVELOPE_BYTES)
    _add_routes(app, predictor, summary, limits)
    attach(app, predictor, summary, limits, info, label_studio)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"detail": "..."}``: HTTP errors, invalid fields (422), bugs (500)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        messages = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
            messages.append(f"{where}: {error.get('msg', 'invalid')}" if where else error["msg"])
        return JSONResponse({"detail": "; ".join(messages) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("error while serving %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


#: What a request body may carry beyond ``--max-bytes``: the multipart envelope of an upload, a
#: Label Studio request's JSON around its tasks (the image itself is checked after reading).
ENVELOPE_BYTES = 64 * 1024


class BodyLimit:
    """ASGI middleware: no route reads more than ``limit`` bytes of a request body, whatever its
    transfer encoding, on every route (``/api/predict`` and the Label Studio routes alike).

    A declared ``Content-Length`` over the limit is answered 413 before any byte is read. Every
    body (chunked ones included) is counted as the route reads it: the read that passes the limit
    raises a 413 instead of returning the bytes, so nothing past the limit is buffered and the
    route's handler never runs; uvicorn discards the rest of the body as it arrives.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    def message(self, size: int | None) -> str:
        body = f"request body of {size} bytes" if size is not None else "request body"
        return f"{body} is over the limit of {self.limit} bytes"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": self.message(int(declared))}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # FastAPI re-raises an HTTPException met while reading a body; the app's
                    # handler answers it as JSON.
                    raise HTTPException(413, self.message(None))
            return message

        await self.app(scope, counted_receive, send)


def _add_routes(app: FastAPI, predictor: Predictor, summary: dict, limits: Limits) -> None:
    """The page, ``/api/health``, ``/api/model`` and ``/api/predict``."""
    started = time.monotonic()
    counter = {"requests": 0}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health", response_model=HealthResponse)
    def health():
        """Liveness: the model is loaded and the server answers."""
        return {
            "status": "ok",
            "model": summary["name"],
            "requests": counter["requests"],
            "uptime_s": round(time.monotonic() - started, 1),
        }

    @app.get("/api/model", response_model=ModelResponse)
    def model_info():
        """Classes (with drawing colours), input size and a summary of the run's recipe."""
        return summary

    _add_predict_route(app, predictor, summary, limits, counter)


def _add_predict_route(
    app: FastAPI, predictor: Predictor, summary: dict, limits: Limits, counter: dict
) -> None:
    """``POST /api/predict``: decode the upload (within ``limits``), detect, count the request."""

    @app.post("/api/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(
        image: Annotated[UploadFile, File(description="an encoded image (JPEG, PNG, ...)")],
        min_score: Annotated[
            float | None,
            Form(
                ge=0.0,
                le=1.0,
                description="drop detections scoring below this (default: the run's best-F1 "
                "threshold, /api/model's min_score)",
            ),
        ] = None,
        max_detections: Annotated[
            int | None,
            Form(ge=1, le=MAX_DETECTIONS_LIMIT, description="keep at most this many"),
        ] = None,
    ):
        """Detect objects in one uploaded image; boxes are in pixels of that image."""
        data = await image.read(limits.max_bytes + 1)
        start = time.perf_counter()
        try:
            array = await run_in_threadpool(decode_upload, data, limits)
        except UploadError as exc:
            raise HTTPException(exc.status, exc.message) from None
        if min_score is None:
            min_score = summary["min_score"]
        objects = await run_in_threadpool(predictor.predict, array, min_score, max_detections)
        counter["requests"] += 1
        return {
            "objects": objects,
            "width": int(array.shape[1]),
            "height": int(array.shape[0]),
            "time_ms": round((time.perf_counter() - start) * 1000.0, 2),
        }


def _version() -> str:
    return str(__version__)


# --- Running it -----------------------------------------------------------------------------
ENV_CONFIG = "KDETECT_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """App factory for uvicorn workers (``--workers N``): reads the settings ``serve`` left."""
    import json

    config = json.loads(os.environ[ENV_CONFIG])
    # Several workers would each retrain and switch on their own: retraining needs --workers 1.
    images = config["images"]
    policy = ImagePolicy(images["restricted"], tuple(images["roots"]), tuple(images["hosts"]))
    options = LabelStudioOptions(retrain=False, images=policy)
    return create_app(config["model"], limits=Limits(**config["limits"]), label_studio=options)


def serve(
    model: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 1,
    limits: Limits | None = None,
    log_level: str = "info",
    label_studio=None,
) -> None:
    """Serve ``model`` with uvicorn until interrupted (``workers`` processes, one model each).

    ``label_studio``: :class:`kdetect.apps.labelstudio.LabelStudioOptions` (one worker only; workers
    read ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY`` from the environment and do not retrain).
    """
    import json

    import uvicorn

    limits = limits or Limits()
    if label_studio is None:  # beyond 127.0.0.1, no local paths nor foreign URLs in tasks
        label_studio = LabelStudioOptions(images=ImagePolicy.for_server(host))
    if workers > 1:
        images = label_studio.images
        os.environ[ENV_CONFIG] = json.dumps(
            {
                "model": str(model),
                "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels},
                "images": {
                    "restricted": images.restricted,
                    "roots": list(images.roots),
                    "hosts": list(images.hosts),
                },
            }
        )
        uvicorn.run(
            "kdetect.apps.serve.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
        )
        return
    app = create_app(model, limits=limits, label_studio=label_studio)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
