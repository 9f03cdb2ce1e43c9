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
        assert (width, height) == (64, 64)
        canvas = np.array(data, np.uint8).reshape(64, 64, 4)[..., :3]
        assert (canvas != sample_image(run)).any(axis=-1).sum() > 20

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
