"""`transfer serve`: the HTTP service of a run's model, and its page.

In-process tests call the Starlette app through its `TestClient` (one app
on the shared tiny run): predictions via multipart, base64 JSON and raw
bytes equal `transfer predict`'s on the same files; limits and bad input
answer 4xx with a one-line JSON error, and the service answers afterwards.
The batcher is tested alone with a fake model. The command itself runs
once, in a subprocess on a free port (`--port 0`), for the end-to-end,
concurrent-clients and headless-chromium tests (the last skipped without
chromium: `apt-get install chromium`, or `make browser`). Refusals before
start (a run without a model, a busy port, a missing extra) call `main`
here: they answer before Keras loads.

Covers: transfer.serving, transfer.cli (serve).
"""

import base64
import concurrent.futures
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import zlib

import keras
import numpy as np
import pytest
from PIL import Image

import transfer
from transfer import workflow
from transfer.cli import SERVE_DEFAULTS
from transfer.cli import main
from transfer.serving import server

starlette = pytest.importorskip(
    "starlette", reason='needs the serve extra: pip install "keras-transfer[serve]"')
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

from starlette.testclient import TestClient  # noqa: E402

from transfer.serving import app as serving_app  # noqa: E402
from transfer.serving.batcher import Batcher  # noqa: E402

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent

HOST = "127.0.0.1"
MAX_BYTES = 64 * 1024
MAX_PIXELS = 100_000


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _png_header(width, height):
    """A PNG that only claims its size: a bomb's header, a few bytes."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four PNGs: three at the model's 32 px, one 48x40 (resized)."""
    folder = tmp_path_factory.mktemp("serve_images")
    x, _ = transfer.synthetic_images(4, 48, 2, seed=3)
    paths = []
    for i, image in enumerate(x):
        pixels = np.clip(image, 0, 255).astype("uint8")
        pixels = pixels[:40] if i == 3 else pixels[:32, :32]
        path = folder / f"{i}.png"
        path.write_bytes(_png(pixels))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def expected(tiny_run, images):
    """`transfer predict`'s answer for each image, top 2."""
    previous = sys.stdout
    out = io.StringIO()
    sys.stdout = out
    try:
        code = main(["predict", tiny_run["run_dir"], *images, "--top-k", "2",
                     "--quiet"])
    finally:
        sys.stdout = previous
    assert code == 0
    return {r["file"]: r["predictions"] for r in json.loads(out.getvalue())}


@pytest.fixture(scope="module")
def client(tiny_run):
    model, _ = workflow.load_run(tiny_run["run_dir"])
    app = serving_app.create_app(
        model, title="tiny", max_request_bytes=MAX_BYTES,
        max_image_pixels=MAX_PIXELS, max_delay=0.002)
    with TestClient(app) as test_client:
        yield test_client


def _same(answer, predictions):
    assert [p["class"] for p in answer] == [p["class"] for p in predictions]
    for mine, theirs in zip(answer, predictions, strict=True):
        assert mine["probability"] == pytest.approx(theirs["probability"],
                                                    abs=1e-5)


def _check_error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    assert "\n" not in response.text
    return body["error"]


# The serving path on every backend: a model called from the batcher's
# thread, batches padded to a power of two.
@pytest.mark.all_backends
def test_predict_matches_transfer_predict(client, images, expected):
    for path in images:
        data = open(path, "rb").read()
        multipart = client.post("/predict", files={"image": ("x.png", data)},
                                data={"top_k": "2"})
        assert multipart.status_code == 200, multipart.text
        _same(multipart.json()["predictions"], expected[path])
        as_json = client.post("/predict", json={
            "image": base64.b64encode(data).decode(), "top_k": 2})
        assert as_json.status_code == 200, as_json.text
        _same(as_json.json()["predictions"], expected[path])
        raw = client.post("/predict?top_k=2", content=data,
                          headers={"Content-Type": "image/png"})
        _same(raw.json()["predictions"], expected[path])
    # Default top_k: every class of this 2-class model (at most 5).
    default = client.post("/predict", files={"image": open(images[0], "rb")})
    assert len(default.json()["predictions"]) == 2


def test_health_and_page(client):
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["classes"] == ["cat", "dog"]
    assert health["image_size"] == 32
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # Self-contained: nothing is loaded from elsewhere.
    for external in ("http://", "https://", "<link", " src="):
        assert external not in page.text
    assert "<h1>tiny</h1>" in page.text and "cat, dog" in page.text


def test_too_large_answers_413_and_serves_on(client, images):
    big = os.urandom(MAX_BYTES + 1)
    message = _check_error(client.post(
        "/predict", files={"image": ("big.png", big)}), 413)
    assert f"{MAX_BYTES:,} bytes" in message
    _check_error(client.post("/predict", json={
        "image": base64.b64encode(big).decode()}), 413)

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(8):
            yield b"\0" * (MAX_BYTES // 4)

    _check_error(client.post("/predict", content=chunks(),
                             headers={"Content-Type": "image/png"}), 413)
    ok = client.post("/predict", files={"image": open(images[0], "rb")})
    assert ok.status_code == 200


def test_bad_input_answers_4xx(client, images):
    message = _check_error(client.post(
        "/predict", content=b"hello", headers={"Content-Type": "text/plain"}),
        415)
    assert "multipart/form-data" in message
    _check_error(client.post("/predict", content=b"{}"), 415)  # no type
    message = _check_error(client.post(
        "/predict", files={"image": ("notes.png", b"not an image")}), 400)
    assert "not an image" in message
    _check_error(client.post("/predict", files={"other": ("a", b"x")}), 400)
    _check_error(client.post("/predict", json={"image": "%%%"}), 400)
    _check_error(client.post("/predict", json=["image"]), 400)
    _check_error(client.post("/predict", content=b"{", headers={
        "Content-Type": "application/json"}), 400)
    truncated = open(images[0], "rb").read()[:200]
    _check_error(client.post("/predict", content=truncated,
                             headers={"Content-Type": "image/png"}), 400)
    for top_k in ("0", "3", "two", "1.5"):
        message = _check_error(client.post(
            f"/predict?top_k={top_k}", files={"image": open(images[0], "rb")}),
            400)
        assert "from 1 to 2" in message
    _check_error(client.get("/predict"), 405)
    _check_error(client.get("/nowhere"), 404)
    assert client.get("/health").json()["status"] == "ok"


def test_image_bombs_refused_from_header(client, images):
    # Over Pillow's own limit (twice 89.5 MP): refused by Pillow's check.
    huge = _png_header(100_000, 100_000)
    message = _check_error(client.post(
        "/predict", content=huge, headers={"Content-Type": "image/png"}), 413)
    assert "pixels" in message
    # Over this server's limit (MAX_PIXELS), a few KB compressed.
    wide = _png(np.zeros((400, 300), "uint8"))
    assert len(wide) < MAX_BYTES
    message = _check_error(client.post(
        "/predict", files={"image": ("wide.png", wide)}), 413)
    assert "400" in message and f"{MAX_PIXELS:,}" in message
    ok = client.post("/predict", files={"image": open(images[0], "rb")})
    assert ok.status_code == 200


def test_create_app_checks():
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    with pytest.raises(ValueError, match="Received: max_request_bytes=0"):
        serving_app.create_app(model, max_request_bytes=0)
    model.transfer_metadata = {"modality": "text", "class_names": ["a", "b"]}
    with pytest.raises(ValueError, match="Received: modality='text'"):
        serving_app.create_app(model)


def test_cli_defaults_agree_with_the_app():
    assert SERVE_DEFAULTS["max_request_mb"] * 1024 * 1024 == (
        serving_app.MAX_REQUEST_BYTES)
    assert SERVE_DEFAULTS["max_image_pixels"] == serving_app.MAX_IMAGE_PIXELS


def test_batcher_gathers_waiting_requests():
    started, release = threading.Event(), threading.Event()
    calls = []

    def predict(items):
        calls.append(list(items))
        if len(calls) == 1:
            started.set()
            release.wait(10)
        if "bad" in items:
            raise RuntimeError("model failed")
        return [item * 2 for item in items]

    batcher = Batcher(predict, max_batch_size=8, max_delay=0.0)
    batcher.start()
    try:
        first = batcher.submit(1)
        assert started.wait(10)
        # These wait while the first batch runs, then go in one call.
        waiting = [batcher.submit(i) for i in range(2, 9)]
        release.set()
        assert first.result(10) == 2
        assert [f.result(10) for f in waiting] == [2 * i for i in range(2, 9)]
        assert calls[1] == list(range(2, 9))
        assert batcher.stats == {"requests": 8, "batches": 2,
                                 "largest_batch": 7}
        # An error answers its batch's requests; the worker carries on.
        with pytest.raises(RuntimeError, match="model failed"):
            batcher.submit("bad").result(10)
        assert batcher.submit(5).result(10) == 10
    finally:
        release.set()
        batcher.close()
    with pytest.raises(ValueError, match="Received: max_batch_size=0"):
        Batcher(predict, max_batch_size=0)


def _serve_main(capsys, *args):
    code = main(["serve", *args])
    return code, capsys.readouterr().err


def test_cli_refuses_run_dir_without_model(tmp_path, capsys):
    code, err = _serve_main(capsys, str(tmp_path / "missing"))
    assert code == 2 and "No run directory" in err
    code, err = _serve_main(capsys, str(tmp_path))
    assert code == 2 and "No trained model" in err and "model.keras" in err
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    code, err = _serve_main(capsys, str(tmp_path))
    assert code == 2 and "has not finished" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_refuses_busy_port(tiny_run, capsys):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = _serve_main(capsys, tiny_run["run_dir"], "--port",
                                str(port))
    assert code == 2, err
    assert f"Port {port} on {HOST} is already in use" in err
    assert "--port" in err and len(err.strip().splitlines()) == 1
    code, err = _serve_main(capsys, tiny_run["run_dir"], "--port", "70000")
    assert code == 2 and "Received: --port 70000" in err
    code, err = _serve_main(capsys, tiny_run["run_dir"],
                            "--max-batch-size", "0")
    assert code == 2 and "--max-batch-size" in err


def test_cli_names_the_extra_when_missing(tiny_run, capsys, monkeypatch):
    monkeypatch.setattr(server, "DEPENDENCIES",
                        {"no_such_module_" + uuid.uuid4().hex: "uvicorn"})
    code, err = _serve_main(capsys, tiny_run["run_dir"])
    assert code == 1
    assert 'pip install "keras-transfer[serve]"' in err


# The command in a subprocess, on a free port.


@pytest.fixture(scope="module")
def cli_server(tiny_run, tmp_path_factory):
    """`transfer serve RUN --port 0` in a subprocess: its URL."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND=keras.config.backend())
    root = os.path.dirname(os.path.dirname(os.path.abspath(transfer.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    log = open(tmp_path_factory.mktemp("serve_log") / "stderr.txt", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "transfer", "serve", tiny_run["run_dir"],
         "--port", "0", "--max-batch-size", "4", "--batch-wait-ms", "20"],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 300)
        line = process.stdout.readline() if ready else ""
        if not line:
            log.seek(0)
            pytest.fail(f"transfer serve did not start: {log.read()[-3000:]}")
        started = json.loads(line)
        assert started["url"].startswith(f"http://{HOST}:")
        assert started["class_names"] == ["cat", "dog"]
        yield started["url"], process, log
        # Ctrl+C stops it gracefully: exit 0, no traceback.
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        log.seek(0)
        stderr = log.read()
        assert "Traceback" not in stderr and "Stopped." in stderr, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stdout.close()
        log.close()


def _post_json(url, body):
    request = urllib.request.Request(
        url + "predict", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_cli_serves_concurrent_clients(cli_server, images, expected):
    url, _, _ = cli_server
    with urllib.request.urlopen(url + "health", timeout=30) as response:
        assert json.loads(response.read())["status"] == "ok"
    bodies = {path: base64.b64encode(open(path, "rb").read()).decode()
              for path in images}
    jobs = [images[i % len(images)] for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda path: _post_json(url, {"image": bodies[path], "top_k": 2}),
            jobs))
    for path, answer in zip(jobs, answers, strict=True):
        _same(answer["predictions"], expected[path])
    with urllib.request.urlopen(url + "health", timeout=30) as response:
        stats = json.loads(response.read())
    assert stats["requests"] >= 24
    assert 1 <= stats["largest_batch"] <= 4


def _above(fd, lowest=10):
    """`fd` moved to a number from `lowest` up."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
    os.close(fd)
    return high


def _cdp_browser(chromium, profile, log):
    """Chromium driven over `--remote-debugging-pipe` (fds 3 and 4)."""
    commands_read, commands_write = os.pipe()
    events_read, events_write = os.pipe()
    # Above 4, so that `3<&N 4>&M` cannot overwrite one with the other
    # (bash: dash takes one-digit numbers only).
    commands_read, events_write = _above(commands_read), _above(events_write)
    process = subprocess.Popen(
        ["bash", "-c", f'exec "$0" "$@" 3<&{commands_read} 4>&{events_write}',
         chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe", f"--user-data-dir={profile}",
         "--window-size=1000,700", "about:blank"],
        pass_fds=(commands_read, events_write),
        stdout=subprocess.DEVNULL, stderr=log,
    )
    os.close(commands_read)
    os.close(events_write)
    return process, commands_write, events_read


class _DevTools:
    """Sends DevTools commands as `\\0`-terminated JSON; reads answers."""

    def __init__(self, write_fd, read_fd):
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buffer = b""
        self.next_id = 0

    def call(self, method, session=None, timeout=60, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self.next_id:
                    assert "error" not in answer, answer
                    return answer["result"]
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.read_fd], [], [], max(0, left))
            assert ready, f"no answer to {method}"
            chunk = os.read(self.read_fd, 1 << 20)
            assert chunk, f"chromium closed its pipe after {method}"
            self.buffer += chunk

    def evaluate(self, session, expression):
        result = self.call("Runtime.evaluate", session, expression=expression,
                           returnByValue=True, awaitPromise=True)
        return result["result"].get("value")


@pytest.mark.browser
def test_page_in_headless_chromium(cli_server, images, expected, tmp_path):
    url, _, _ = cli_server
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    log = open(tmp_path / "chromium.log", "w")
    process, write_fd, read_fd = _cdp_browser(chromium, tmp_path / "profile",
                                              log)
    tools = _DevTools(write_fd, read_fd)
    try:
        target = tools.call("Target.createTarget", url="about:blank",
                            newWindow=True, width=1000, height=700)
        session = tools.call("Target.attachToTarget", flatten=True,
                             targetId=target["targetId"])["sessionId"]
        tools.call("Page.enable", session)
        tools.call("Page.navigate", session, url=url)
        deadline = time.monotonic() + 60
        loaded = ("document.readyState === 'complete' && "
                  "!!document.getElementById('file')")
        while not tools.evaluate(session, loaded):
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.2)
        document = tools.call("DOM.getDocument", session)
        node = tools.call("DOM.querySelector", session, selector="#file",
                          nodeId=document["root"]["nodeId"])
        # As if a person chose the file: the input's change event fires.
        tools.call("DOM.setFileInputFiles", session, files=[images[3]],
                   nodeId=node["nodeId"])
        state = None
        while state not in ("done", "error"):
            assert time.monotonic() < deadline + 60, "no answer on the page"
            time.sleep(0.2)
            state = tools.evaluate(session, "document.body.dataset.state")
        rows = tools.evaluate(session, """[...document.querySelectorAll(
            '.prediction')].map(r => [r.querySelector('.name').textContent,
            r.querySelector('.probability').textContent])""")
        status = tools.evaluate(session,
                                "document.getElementById('status').textContent")
        shot = tools.call("Page.captureScreenshot", session, format="png")
        path = tmp_path / "serve_page.png"
        path.write_bytes(base64.b64decode(shot["data"]))
    finally:
        with contextlib.suppress(Exception):  # it may close before answering
            tools.call("Browser.close", timeout=10)
        os.close(write_fd)
        os.close(read_fd)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()
    assert state == "done", status
    want = expected[images[3]]
    assert [name for name, _ in rows] == [p["class"] for p in want]
    for (_, shown), p in zip(rows, want, strict=True):
        assert shown == f"{100 * p['probability']:.1f}%"
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[0] > 400 and picture.shape[1] > 600, picture.shape
    # A drawn page: the orange probability bars are there.
    orange = ((picture[..., 0] > 220) & (picture[..., 1] > 90)
              & (picture[..., 1] < 140) & (picture[..., 2] < 40))
    assert orange.sum() > 200, path
