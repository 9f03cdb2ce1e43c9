"""``kdetect serve`` over real HTTP: a uvicorn server on a free port, 8 concurrent clients, the
page in headless Chromium (Playwright) and a schemathesis run of the OpenAPI schema.

The browser test skips when Playwright's Python package or /usr/bin/chromium is missing; the
schemathesis test skips when schemathesis is missing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from tests.serve_support import (  # noqa: E402
    LiveServer,
    encode,
    launch_chromium,
    loaded_model,
    sample_image,
    serve_app,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return loaded_model(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LiveServer(serve_app(tmp_path_factory)) as live:
        yield live


def test_200_requests_from_8_concurrent_clients(server, run):
    import numpy as np

    rng = np.random.default_rng(0)
    images = [encode(sample_image(run))] + [
        encode(rng.integers(0, 255, (48 + 8 * i, 64, 3), np.uint8)) for i in range(3)
    ]
    reference = {}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for i, data in enumerate(images):
            reference[i] = c.post(
                "/api/predict", files={"image": ("a.png", data)}, data={"min_score": "0"}
            ).json()["objects"]

    def client(worker: int) -> list[tuple[int, int, list]]:
        results = []
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for k in range(25):
                i = (worker + k) % len(images)
                r = c.post(
                    "/api/predict",
                    files={"image": ("a.png", images[i])},
                    data={"min_score": "0"},
                )
                results.append((i, r.status_code, r.json().get("objects")))
        return results

    with ThreadPoolExecutor(8) as pool:
        results = [item for part in pool.map(client, range(8)) for item in part]
    assert len(results) == 200
    assert [status for _, status, _ in results] == [200] * 200
    # Concurrency does not mix up answers: each image gets its own detections every time.
    for i, _, objects in results:
        assert objects == reference[i]
    assert httpx.get(server.url + "/api/health").json()["requests"] >= 204


def test_page_uploads_and_draws_boxes(server, run, tmp_path):
    import numpy as np

    playwright, browser = launch_chromium()
    try:
        page = browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelectorAll('#classes li').length === 3")
        assert page.inner_text("#classes").split() == ["circle", "rectangle", "triangle"]

        image = tmp_path / "shapes.png"
        image.write_bytes(encode(sample_image(run)))
        page.fill("#threshold", "0")  # show everything (the model is tiny and barely trained)
        page.set_input_files("#file", str(image))
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        drawn = int(page.get_attribute("#canvas", "data-drawn"))
        assert drawn > 0
        assert page.locator("#detections li").count() == drawn
        # The canvas shows the image with boxes: some pixels carry the class colours.
        pixels = page.evaluate(
            """() => {
                const c = document.getElementById('canvas');
                return [c.width, c.height,
                        Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];
            }"""
        )
        width, height, data = pixels
        # the 64 px image enlarged 5x (as predict's drawn images), its pixels kept sharp
        assert (width, height) == (320, 320)
        canvas = np.array(data, np.uint8).reshape(320, 320, 4)[..., :3]
        enlarged = np.repeat(np.repeat(sample_image(run), 5, axis=0), 5, axis=1)
        differs = (canvas != enlarged).any(axis=-1)
        assert differs.sum() > 20 and differs.mean() < 0.5

        # The slider filters in the browser, without another request.
        requests: list[str] = []
        page.on("request", lambda req: requests.append(req.url))
        page.fill("#threshold", "1")
        assert page.get_attribute("#canvas", "data-drawn") == "0"
        assert page.locator("#detections li").count() == 0
        assert requests == []
        assert problems == []
    finally:
        browser.close()
        playwright.stop()


def test_schemathesis_finds_no_server_error(server):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/predict", "/api/health", "/api/model"}
    seen = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            response = case.call(base_url=server.url, timeout=60)
            seen.append(response.status_code)
            assert response.status_code < 500, (case.path, response.text)

        check()
    assert seen and all(code < 500 for code in seen)


# --- The body limit on every POST route, over real HTTP ---------------------------------------
LIMIT = 1024 * 1024  # --max-bytes of the small server below
BODY = 64 * 1024 * 1024  # what a hostile client sends
CHUNK = b" " * (1024 * 1024)  # one object yielded again and again: the client holds 1 MiB


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    from kdetect.apps.uploads import Limits

    with LiveServer(serve_app(tmp_path_factory, limits=Limits(max_bytes=LIMIT))) as live:
        yield live


def _post_routes(app) -> list[str]:
    return sorted(r.path for r in app.routes if "POST" in (getattr(r, "methods", None) or ()))


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM); False where Linux's clear_refs is unavailable."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def test_every_post_route_refuses_a_chunked_body_over_max_bytes(small_server, monkeypatch):
    """A chunked body (no Content-Length) of 64 MiB to a server with --max-bytes 1 MiB: every POST
    route answers 413 and no handler runs; the server (in this process) does not grow by the
    body: the peak RSS while it arrives stays far below its size."""
    app = small_server.server.config.app
    routes = _post_routes(app)
    assert {"/api/predict", "/predict", "/setup", "/webhook", "/train"} <= set(routes)
    handled = []
    backend = app.state.label_studio
    for name in ("predict", "setup", "start_training"):
        monkeypatch.setattr(backend, name, lambda *a, _n=name, **k: handled.append(_n))

    def body(start: bytes):
        yield start
        for _ in range(BODY // len(CHUNK)):
            yield CHUNK

    # The upload's multipart envelope opens a file part that never ends; JSON bodies are blanks.
    multipart = (
        b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    starts = {"/api/predict": multipart}
    content_types = {"/api/predict": "multipart/form-data; boundary=x"}
    with httpx.Client(base_url=small_server.url, timeout=600) as client:
        for route in routes:
            measured = _reset_peak_rss()
            before = _status_kib("VmRSS")
            headers = {"content-type": content_types.get(route, "application/json")}
            response = client.post(route, content=body(starts.get(route, b"")), headers=headers)
            assert response.request.headers.get("transfer-encoding") == "chunked"
            assert response.status_code == 413, (route, response.text)
            detail = response.json()["detail"]
            assert detail == f"request body is over the limit of {LIMIT + 64 * 1024} bytes"
            if measured:
                grown = (_status_kib("VmHWM") - before) * 1024
                assert grown < BODY // 4, (route, grown)
            # The same body with its length declared is refused before it is read.
            response = client.post(route, content=b" " * (2 * LIMIT), headers=headers)
            assert response.status_code == 413, (route, response.text)
            assert f"request body of {2 * LIMIT} bytes" in response.json()["detail"]
    assert handled == []
    assert httpx.get(small_server.url + "/api/health", timeout=60).json()["status"] == "ok"
