"""``kdetect serve``'s JSON API through FastAPI's TestClient: the contract and each bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from kdetect.apps.predict import Detector  # noqa: E402
from kdetect.runs import best_min_score, inspect_run  # noqa: E402
from tests.data_support import png_header_only  # noqa: E402
from tests.serve_support import encode, loaded_model, sample_image, serve_app  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return loaded_model(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    _, model, classes = loaded_model(tmp_path_factory)
    return Detector(model, classes)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(serve_app(tmp_path_factory)) as c:
        yield c


@pytest.fixture(scope="module")
def small_limits_client(tmp_path_factory):
    from kdetect.apps.serve import Limits

    app = serve_app(tmp_path_factory, limits=Limits(max_bytes=50_000, max_pixels=100 * 100))
    with TestClient(app) as c:
        yield c


def _post(client, data: bytes | None, name="x.png", **fields):
    files = {"image": (name, data, "application/octet-stream")} if data is not None else None
    form = {k: str(v) for k, v in fields.items()}
    return client.post("/api/predict", files=files, data=form)


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    return body["detail"]


def test_predict_matches_detector(client, run, tmp_path_factory):
    _, model, classes = loaded_model(tmp_path_factory)
    image = sample_image(run)
    response = _post(client, encode(image), min_score=0)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["objects", "width", "height", "time_ms"]
    assert (body["width"], body["height"]) == (64, 64) and body["time_ms"] > 0
    expected = Detector(model, classes, min_score=0.0).predict(image)[0]["objects"]
    assert len(body["objects"]) == len(expected) > 0
    for got, want in zip(body["objects"], expected, strict=True):
        assert list(got) == ["bbox", "label", "label_id", "score"]
        assert got["label"] == classes[got["label_id"]] == want["label"]
        np.testing.assert_allclose(got["bbox"], want["bbox"], atol=0.02)
        assert got["score"] == pytest.approx(want["score"], abs=1e-3)


def test_min_score_and_max_detections(client, run):
    data = encode(sample_image(run), "JPEG")
    every = _post(client, data, min_score=0).json()["objects"]
    scores = [o["score"] for o in every]
    assert scores == sorted(scores, reverse=True)
    cut = scores[len(scores) // 2]
    some = _post(client, data, min_score=cut).json()["objects"]
    assert some == [o for o in every if o["score"] >= cut]
    assert _post(client, data, min_score=0, max_detections=2).json()["objects"] == every[:2]
    # min_score defaults to the run's threshold, which /api/model names (as predict's does)
    threshold = client.get("/api/model").json()["min_score"]
    assert threshold == best_min_score(inspect_run(run))[0]
    default = _post(client, data).json()["objects"]
    assert default == [o for o in every if o["score"] >= threshold]


def test_other_sizes_and_modes(client):
    rng = np.random.default_rng(0)
    for shape in [(37, 91, 3), (120, 40, 3)]:
        body = _post(client, encode(rng.integers(0, 255, shape, np.uint8)), min_score=0).json()
        assert (body["height"], body["width"]) == shape[:2]
        for obj in body["objects"]:
            x1, y1, x2, y2 = obj["bbox"]
            assert 0 <= x1 <= x2 <= shape[1] and 0 <= y1 <= y2 <= shape[0]
    gray = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.full((30, 50), 128, np.uint8)).save(gray, "PNG")
    assert _post(client, gray.getvalue()).json()["width"] == 50


def test_health_model_and_openapi(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok"
    info = client.get("/api/model").json()
    assert info["classes"] == ["circle", "rectangle", "triangle"]
    assert info["image_size"] == [64, 64] and len(info["colors"]) == 3
    assert info["recipe"]["name"] == "shapes"
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/health", "/api/model"} <= set(schema["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: everything is local
    assert client.get("/static/app.js").status_code == 200


def test_missing_field(client):
    assert "image" in _error(_post(client, None), 422)
    assert "image" in _error(client.post("/api/predict"), 422)


def test_bad_fields(client, run):
    data = encode(sample_image(run))
    assert "min_score" in _error(_post(client, data, min_score=1.5), 422)
    assert "min_score" in _error(_post(client, data, min_score="high"), 422)
    assert "max_detections" in _error(_post(client, data, max_detections=0), 422)


def test_not_an_image(client):
    assert "not a readable image" in _error(_post(client, b"hello, world" * 10), 400)
    assert "empty" in _error(_post(client, b""), 400)


def test_truncated_image(client, run):
    rng = np.random.default_rng(1)
    for fmt in ("PNG", "JPEG"):
        data = encode(rng.integers(0, 255, (200, 200, 3), np.uint8), fmt)
        detail = _error(_post(client, data[: len(data) // 2]), 400)
        assert "truncated" in detail or "corrupt" in detail


def test_too_many_pixels(client, small_limits_client):
    assert "pixels" in _error(
        _post(small_limits_client, encode(np.zeros((101, 100, 3), np.uint8))), 413
    )
    # A decompression bomb: tiny file, 50000x50000 pixels; refused from its header.
    assert "pixels" in _error(_post(client, png_header_only(50_000, 50_000)), 413)
    ok = _post(small_limits_client, encode(np.zeros((100, 100, 3), np.uint8)))
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "size, status, detail",
    [
        ((20_000, 20_000), 413, "400000000 pixels, over the limit of 40000000 pixels"),
        ((1, 5000), 400, "1x5000 image is too small; each side must be at least 8 pixels"),
        ((5000, 1), 400, "5000x1 image is too small; each side must be at least 8 pixels"),
        ((3, 2000), 400, "3x2000 image is too small; each side must be at least 8 pixels"),
        ((10, 300), 400, "10x300 image is too elongated; the long side may be at most 20 times"),
    ],
    ids=["bomb", "1x5000", "5000x1", "3x2000", "10x300"],
)
def test_extreme_sizes_are_4xx_naming_the_limit(client, detector, size, status, detail):
    from kdetect.data.images import ImageSizeError

    width, height = size
    if width * height > 10**8:
        data = png_header_only(width, height)
    else:
        data = encode(np.zeros((height, width, 3), np.uint8))
        with pytest.raises(ImageSizeError, match=detail):  # the Python API refuses it too
            detector.predict(np.zeros((height, width, 3), np.uint8))
    assert detail in _error(_post(client, data), status)


def test_too_many_bytes(small_limits_client):
    noise = np.random.default_rng(2).integers(0, 255, (99, 99, 3), np.uint8)
    data = encode(noise, "BMP")  # ~29 KB; padded to exceed the 50 KB limit below
    assert "bytes" in _error(_post(small_limits_client, data + b"\0" * 30_000, name="a.bmp"), 413)
    big = b"\0" * 200_000  # the request body alone is over the limit
    assert "limit" in _error(_post(small_limits_client, big), 413)


def test_wrong_method_and_unknown_path(client):
    assert _error(client.get("/api/predict"), 405)
    assert _error(client.put("/api/predict"), 405)
    assert _error(client.post("/api/health"), 405)
    assert _error(client.get("/api/nothing"), 404)


def test_cli_serve_reports_bad_model(tmp_path, capsys):
    from tests.train_support import kdetect

    assert kdetect("serve", tmp_path / "missing") == 1
    assert "missing" in capsys.readouterr().err
