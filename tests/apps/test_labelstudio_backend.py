"""kdetect.apps.labelstudio without Label Studio: label configs, label mapping, image URLs, the
dataset writer, and the ML backend routes' answers to good and bad requests (TestClient over the
session's tiny shapes run). The live protocol is in test_labelstudio_live.py."""

from __future__ import annotations

import csv
import http.server
import logging
import os
import shutil
import socket
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from kdetect.apps.labelstudio import Credentials, ImagePolicy, LabelStudioOptions
from kdetect.apps.labelstudio.client import LabelStudioError
from kdetect.apps.labelstudio.dataset import split_of, write_dataset
from kdetect.apps.labelstudio.labelconfig import LabelConfigError, map_labels, parse_label_config
from kdetect.apps.labelstudio.tasks import ImageSource, TaskError, read_bytes, resolve_image
from kdetect.apps.serve import Limits, create_app
from kdetect.data.labelstudio import box_from_region, region_from_box
from tests.serve_support import loaded_model
from tests.train_support import kdetect

CONFIG = """<View><Image name="img" value="$picture"/>
<rectanglelabels name="box" toName="img"><Label value="Circle"/><Label value="triangle"/>
<Label value="Star"/></rectanglelabels></View>"""
KEY = "secret-key-that-must-not-leak"


def test_parse_label_config():
    config = parse_label_config(CONFIG)
    assert (config.from_name, config.to_name, config.image_key) == ("box", "img", "picture")
    assert config.labels == ("Circle", "triangle", "Star")


@pytest.mark.parametrize(
    "xml, message",
    [
        ("", "empty"),
        ("<View><Image", "not valid XML"),
        (
            '<View><Image name="i" value="$i"/><Choices name="c" toName="i"/></View>',
            "no <RectangleLabels>",
        ),
        (
            '<View><RectangleLabels name="l" toName="i"><Label value="a"/>'
            "</RectangleLabels></View>",
            "no <Image name='i'",
        ),
        (
            '<View><Image name="i" value="$i"/><RectangleLabels name="l" toName="i"/></View>',
            "has no Label",
        ),
        ('<!DOCTYPE x [<!ENTITY a "b">]><View/>', "DOCTYPE"),
    ],
)
def test_bad_label_configs(xml, message):
    with pytest.raises(LabelConfigError, match="^label config: ") as error:
        parse_label_config(xml)
    assert message in str(error.value)


def test_map_labels_exact_then_case_insensitive():
    labels = map_labels(
        ["Circle", "triangle", "Star", "RECTANGLE"], ["circle", "rectangle", "triangle", "square"]
    )
    assert labels.to_class == {"Circle": "circle", "triangle": "triangle", "RECTANGLE": "rectangle"}
    assert labels.unknown == ["Star"] and labels.unused_classes == ["square"]
    assert labels.to_label["circle"] == "Circle"
    assert "does not know 'Star'" in labels.message()
    # An exact match wins over a case-insensitive one.
    assert map_labels(["cat"], ["Cat", "cat"]).to_class == {"cat": "cat"}


@pytest.mark.parametrize(
    "value, kind, location",
    [
        ("/data/upload/3/ab12-x.png", "label-studio", "/data/upload/3/ab12-x.png"),
        ("/data/local-files/?d=images/x.jpg", "label-studio", "/data/local-files/?d=images/x.jpg"),
        (
            "http://ls.local:8080/data/upload/1/x.png",
            "label-studio",
            "http://ls.local:8080/data/upload/1/x.png",
        ),
        ("http://ls.local:9000/x.png", "http", "http://ls.local:9000/x.png"),
        ("https://example.org/x.png", "http", "https://example.org/x.png"),
        ("file:///tmp/a%20b.png", "file", "/tmp/a b.png"),
        ("/tmp/a.png", "file", "/tmp/a.png"),
        ("relative/a.png", "file", "relative/a.png"),
    ],
)
def test_resolve_image(value, kind, location):
    assert resolve_image(value, "http://ls.local:8080") == ImageSource(kind, location)


def test_unusable_image_references():
    with pytest.raises(TaskError, match="unsupported URL scheme 'ftp'"):
        resolve_image("ftp://host/x.png", None)
    with pytest.raises(TaskError, match="expected a URL or path"):
        resolve_image("", None)
    with pytest.raises(TaskError, match="needs --label-studio-url and --label-studio-key"):
        read_bytes(ImageSource("label-studio", "/data/upload/1/x.png"), None, Limits())


def test_credentials_never_show_the_key(monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls.local:8080/")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)
    credentials = Credentials.resolve()
    assert credentials.url == "http://ls.local:8080" and credentials.key == KEY
    assert KEY not in repr(credentials)
    assert Credentials.resolve(key="flag").key == "flag"
    with pytest.raises(LabelStudioError, match="--label-studio-key or set LABEL_STUDIO_API_KEY"):
        Credentials("http://x").require()
    with pytest.raises(LabelStudioError, match="must be http"):
        Credentials("ls.local", "k").require()


def test_split_holds_out_every_fourth_and_at_least_one():
    assert [split_of(i, 8, 0.25) for i in range(8)].count("val") == 2
    assert [split_of(i, 2, 0.25) for i in range(2)] == ["train", "val"]


def _task(task_id, path, boxes):
    result = [
        region_from_box(b, label, 40, 30, from_name="box", to_name="img") for b, label in boxes
    ]
    return {
        "id": task_id,
        "data": {"picture": str(path)},
        "annotations": [{"id": 1, "result": result, "was_cancelled": False}],
    }


def test_write_dataset_and_nothing_half_written(tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(image)
    config = parse_label_config(CONFIG)
    labels = map_labels(config.labels, ["circle", "rectangle", "triangle"])
    tasks = [
        _task(1, image, [([4, 5, 20, 25], "Circle"), ([1, 1, 9, 9], "Star")]),
        _task(2, image, []),
        {"id": 3, "data": {"picture": str(image)}, "annotations": [{"was_cancelled": True}]},
    ]
    info = write_dataset(tasks, config, labels, None, tmp_path / "ds", Limits(), 0.5)
    assert (info.train, info.val, info.boxes) == (1, 1, 1)
    assert info.skipped_regions == {"Star": 1}
    rows = list(csv.reader(open(tmp_path / "ds" / "train.csv")))
    assert rows[1][:4] == ["task-1.png", "40", "30", "circle"]
    assert [float(v) for v in rows[1][4:]] == pytest.approx([4, 5, 20, 25])
    assert list(csv.reader(open(tmp_path / "ds" / "val.csv")))[1][3] == ""
    broken = tasks + [_task(4, tmp_path / "missing.png", [])]
    with pytest.raises(TaskError, match="no such image file"):
        write_dataset(broken, config, labels, None, tmp_path / "ds2", Limits(), 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "ds"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    run, model, classes = loaded_model(tmp_path_factory)
    options = LabelStudioOptions(Credentials(None, None))
    return TestClient(create_app(model, classes, run=run, label_studio=options))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    run = loaded_model(tmp_path_factory)[0]
    return sorted((run / "samples").glob("*.png"))[0]


def test_health_and_setup(client, caplog):
    assert client.get("/health").json() == {
        "status": "UP",
        "model_class": "kdetect",
        "model_version": "tiny",
    }
    with caplog.at_level(logging.WARNING, "kdetect.apps.labelstudio"):
        answer = client.post(
            "/setup",
            json={"project": "7.1700000000", "schema": CONFIG, "extra_params": {"min_score": 0.0}},
        )
    assert answer.status_code == 200
    body = answer.json()
    assert body["model_version"] == "tiny" and body["unknown_labels"] == ["Star"]
    assert body["labels"] == {"Circle": "circle", "triangle": "triangle"}
    assert "does not know 'Star'" in caplog.text


def test_predict_regions_equal_the_predictor(client, sample):
    task = {"id": 5, "data": {"picture": str(sample)}}
    answer = client.post("/predict", json={"tasks": [task], "project": "7.1700000000"})
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["results"]
    assert prediction["model_version"] == "tiny"
    image = np.asarray(Image.open(sample).convert("RGB"))
    predictor = client.app.state.predictor
    expected = [o for o in predictor.predict(image, 0.0) if o["label"] != "rectangle"]
    regions = prediction["result"]
    assert len(regions) == len(expected) > 0  # "rectangle" has no label in the project
    for region, obj in zip(regions, expected, strict=True):
        assert region["from_name"] == "box" and region["to_name"] == "img"
        label, box = box_from_region(region)
        assert label == {"circle": "Circle", "triangle": "triangle"}[obj["label"]]
        np.testing.assert_allclose(box, obj["bbox"], atol=1e-3)
    assert prediction["score"] == pytest.approx(np.mean([o["score"] for o in expected]))


@pytest.mark.parametrize(
    "body, status, detail",
    [
        ({"tasks": [{"data": {"picture": "x.png"}}]}, 400, "no label config"),
        ({"tasks": [{"data": {"image": "x.png"}}], "label_config": CONFIG}, 422, "no data.picture"),
        (
            {"tasks": [{"data": {"picture": "/nope/x.png"}}], "label_config": CONFIG},
            422,
            "task ?: cannot read image '/nope/x.png'",
        ),
        (
            {"tasks": [{"data": {"picture": "/data/upload/1/x.png"}}], "label_config": CONFIG},
            422,
            "needs --label-studio-url",
        ),
        ({"tasks": [{}], "label_config": "<View/>"}, 400, "no <RectangleLabels>"),
        ({"label_config": CONFIG}, 422, "tasks: Field required"),
        ({"tasks": [], "project": "abc"}, 400, "project: expected '<id>.<timestamp>'"),
    ],
)
def test_bad_predict_requests(client, body, status, detail):
    answer = client.post("/predict", json=body)
    assert answer.status_code == status, answer.text
    assert detail in answer.json()["detail"]


def test_bad_setup_requests(client):
    assert "schema: Field required" in client.post("/setup", json={}).json()["detail"]
    answer = client.post("/setup", json={"schema": CONFIG, "extra_params": {"min_score": 2}})
    assert answer.status_code == 400 and "min_score" in answer.json()["detail"]


def test_webhook_events(client):
    created = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 7}})
    assert created.status_code == 201 and created.json()["status"] == "ok"
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).json()["status"] == (
        "Unknown event"
    )
    start = client.post(
        "/webhook", json={"action": "START_TRAINING", "project": {"id": 7, "label_config": CONFIG}}
    )
    assert start.status_code == 400
    assert "no Label Studio URL" in start.json()["detail"]
    assert client.post("/webhook", json={"project": {}}).status_code == 422
    assert client.get("/api/labelstudio/training").json()["state"] == "idle"


def test_cli_train_needs_credentials(tmp_path_factory, capsys, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    run = loaded_model(tmp_path_factory)[0]
    assert kdetect("labelstudio", "train", run, "--project", "1") == 1
    assert "no Label Studio URL" in capsys.readouterr().err
    code = kdetect(
        "labelstudio",
        "train",
        run,
        "--project",
        "1",
        "--label-studio-url",
        "http://127.0.0.1:9",
        "--label-studio-key",
        KEY,
    )
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach Label Studio at http://127.0.0.1:9" in err
    assert KEY not in err


# --- What a client learns of the server's files, and which images a server may read ------------
def _predict(client, value, task_id=3):
    task = {"id": task_id, "data": {"picture": value}}
    return client.post("/predict", json={"tasks": [task], "label_config": CONFIG})


def _refused_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound here, never listening)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    _SOCKETS.append(sock)
    return port


_SOCKETS: list = []


def test_unreadable_images_tell_the_client_nothing_of_the_server(client, tmp_path, caplog):
    """A missing file, a folder, a non-image and a refused port all give the client the same
    line naming the task and the image as given; the reason is in the server's log."""
    (tmp_path / "secret.txt").write_text("root:x:0:0\n")
    cases = {
        str(tmp_path / "missing.png"): "no such image file",
        str(tmp_path): "no such image file",
        str(tmp_path / "secret.txt"): "not a readable image",
        f"http://127.0.0.1:{_refused_port()}/x.png": "cannot download",
    }
    for value, reason in cases.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, "kdetect.apps.labelstudio"):
            answer = _predict(client, value)
        assert answer.status_code == 422, answer.text
        assert answer.json() == {"detail": f"task 3: cannot read image {value!r}"}
        assert reason in caplog.text and value in caplog.text


@pytest.fixture(scope="module")
def image_host(sample):
    """An HTTP server on 127.0.0.1 serving the sample at /ok.png and redirecting /redirect to
    the same server named localhost; ``requests`` records (path, Host header)."""
    data = sample.read_bytes()
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append((self.path, self.headers.get("Host", "")))
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{port}/ok.png")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port, requests
    server.shutdown()
    server.server_close()


def _restricted_client(tmp_path_factory, policy: ImagePolicy) -> TestClient:
    run, model, classes = loaded_model(tmp_path_factory)
    options = LabelStudioOptions(Credentials(None, None), images=policy)
    return TestClient(create_app(model, classes, run=run, label_studio=options, warmup=False))


def test_image_policy_follows_the_bind_address(tmp_path):
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert not ImagePolicy.for_server(host).restricted, host
    for host in ("0.0.0.0", "::", "192.168.1.5", "myhost.example"):
        assert ImagePolicy.for_server(host) == ImagePolicy(True), host
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    policy = ImagePolicy.for_server("127.0.0.1", [link], ["Images.Example"])
    assert policy == ImagePolicy(True, (os.path.realpath(tmp_path),), ("images.example",))


def test_allow_lists_beyond_loopback(tmp_path_factory, tmp_path, sample, image_host, caplog):
    port, requests = image_host
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(sample, allowed / "in.png")
    (allowed / "escape.png").symlink_to(sample)
    policy = ImagePolicy.for_server("0.0.0.0", [allowed], ["127.0.0.1"])
    client = _restricted_client(tmp_path_factory, policy)

    assert _predict(client, str(allowed / "in.png")).status_code == 200
    assert _predict(client, (allowed / "in.png").as_uri()).status_code == 200
    assert _predict(client, f"http://127.0.0.1:{port}/ok.png").status_code == 200
    assert requests == [("/ok.png", f"127.0.0.1:{port}")]
    refused_paths = [
        str(sample),
        str(allowed / ".." / sample.name),
        str(allowed / "escape.png"),
        sample.as_uri(),
        "/etc/passwd",
    ]
    for value in refused_paths:
        answer = _predict(client, value)
        assert answer.status_code == 422, (value, answer.text)
        assert answer.json()["detail"] == (
            f"task image {value!r}: not under this server's --allow-image-root folders"
        )
    answer = _predict(client, f"http://localhost:{port}/ok.png")
    assert answer.status_code == 422
    assert "host not in this server's --allow-image-host list" in answer.json()["detail"]
    # An allowed host cannot redirect the server to another one.
    with caplog.at_level(logging.WARNING, "kdetect.apps.labelstudio"):
        answer = _predict(client, f"http://127.0.0.1:{port}/redirect")
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("task 3: cannot read image")
    assert "--allow-image-host" in caplog.text
    assert all(host == f"127.0.0.1:{port}" for _, host in requests), requests
    # Label Studio's own uploads are not the allow-lists' business (here: no credentials).
    answer = _predict(client, "/data/upload/1/x.png")
    assert "needs --label-studio-url" in answer.json()["detail"]


def test_empty_allow_lists_beyond_loopback_read_no_path_nor_url(
    tmp_path_factory, sample, image_host
):
    port, requests = image_host
    seen = len(requests)
    client = _restricted_client(tmp_path_factory, ImagePolicy.for_server("0.0.0.0"))
    assert "--allow-image-root" in _predict(client, str(sample)).json()["detail"]
    answer = _predict(client, f"http://127.0.0.1:{port}/ok.png")
    assert answer.status_code == 422 and "--allow-image-host" in answer.json()["detail"]
    assert len(requests) == seen  # nothing was fetched


def test_cli_serve_passes_the_allow_lists(tmp_path_factory, tmp_path, monkeypatch):
    import kdetect.apps.serve as serve_package

    seen = {}
    monkeypatch.setattr(serve_package, "serve", lambda model, **kw: seen.update(kw))
    run = loaded_model(tmp_path_factory)[0]
    args = ["--host", "0.0.0.0", "--allow-image-root", tmp_path, "--allow-image-host", "img.lan"]
    assert kdetect("serve", run, *args) == 0
    assert seen["label_studio"].images == ImagePolicy(
        True, (os.path.realpath(tmp_path),), ("img.lan",)
    )
    assert kdetect("serve", run) == 0
    assert seen["label_studio"].images == ImagePolicy(False)
