"""TensorBoard serves a run's dashboards: HTTP data API and headless chromium.

Two tiny runs are trained, `tensorboard --logdir` is started on a loopback
port, the run's tags are asserted through TensorBoard's HTTP data API, and
Debian's chromium takes headless screenshots of the scalars, images and
HParams dashboards (kept under pytest's temporary directory). Skipped where
no chromium is installed (`apt-get install chromium`, or `make browser`);
TensorFlow backend only, since the event files are the same on every
backend (tests/test_tensorboard.py checks that).

Covers: transfer.tensorboard (served by TensorBoard).
"""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

import transfer

pytestmark = [pytest.mark.browser, pytest.mark.requires_backend("tensorflow")]

HOST = "127.0.0.1"  # loopback only
RUNS = {"a": 5e-3, "b": 1e-3}  # run name -> stage-2 learning rate
SUBRUNS = ("", "/stage", "/train", "/train_images", "/validation",
           "/validation_images")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _get(port, route, body=None):
    url = f"http://{HOST}:{port}{route}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Two finished runs under one folder, as users compare runs."""
    root = tmp_path_factory.mktemp("browser") / "runs"
    data = transfer.synthetic_images(num_samples=16, image_size=32, num_classes=2, seed=0)
    for name, rate in RUNS.items():
        model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
        transfer.fit_recipe(
            model, [transfer.Stage("head", 1, 1e-2), transfer.Stage("top", 1, rate, 1)],
            data, validation_data=data, run_dir=str(root / name), batch_size=8,
            class_names=["cat", "dog"], verbose=0,
        )
    return root


@pytest.fixture(scope="module")
def tensorboard_port(runs_dir):
    port = _free_port()
    log = open(runs_dir.parent / "tensorboard.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(runs_dir),
         "--host", HOST, "--port", str(port), "--load_fast=false"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        expected = {f"{run}/logs{sub}" for run in RUNS for sub in SUBRUNS}
        deadline = time.monotonic() + 120
        served = set()
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"tensorboard exited with {process.returncode}; "
                            f"see {log.name}")
            try:
                served = set(_get(port, "/data/runs"))
                if expected <= served:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        assert expected <= served, f"runs served: {sorted(served)}"
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


def test_data_api_serves_the_run_tags(tensorboard_port):
    port = tensorboard_port
    scalars = _get(port, "/data/plugin/scalars/tags")
    images = _get(port, "/data/plugin/images/tags")
    texts = _get(port, "/data/plugin/text/tags")
    for run in RUNS:
        logs = f"{run}/logs"
        assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(
            scalars[f"{logs}/train"])
        assert {"epoch_loss", "epoch_accuracy"} <= set(scalars[f"{logs}/validation"])
        assert set(scalars[f"{logs}/stage"]) == {"stage", "trainable_params"}
        assert set(images[f"{logs}/validation_images"]) == {"confusion_matrix", "top_losses"}
        assert set(images[f"{logs}/train_images"]) == {"training_inputs"}
        assert set(texts[f"{logs}/stage"]) == {"stage_summary", "freeze_plan", "model_summary"}
        assert texts[logs] == ["manifest"]
        # One step axis: stage "top" continues at epoch 1.
        points = _get(port, f"/data/plugin/scalars/scalars?run={logs}/train&tag=epoch_loss")
        assert sorted(step for _, step, _ in points) == [0, 1]
        stages = _get(port, f"/data/plugin/scalars/scalars?run={logs}/stage&tag=stage")
        assert [value for _, _, value in sorted(stages, key=lambda p: p[1])] == [1, 2]
        rates = _get(port, f"/data/plugin/scalars/scalars?run={logs}/train"
                           "&tag=epoch_learning_rate")
        assert sorted(rates, key=lambda p: p[1])[-1][2] == pytest.approx(RUNS[run])


def test_hparams_api_compares_runs(tensorboard_port):
    port = tensorboard_port
    experiment = _get(port, "/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert {"backend", "backbone", "weights", "image_size", "batch_size",
            "stage1_epochs", "stage2_learning_rate", "stage2_trainable_blocks"} <= names
    # The dashboard ticks 5 hparams: those that differ between runs first,
    # then in this (name) order. `all_stages` holds every stage's values.
    infos = experiment["hparamInfos"]
    ticked = sorted(infos, key=lambda info: not info.get("differs"))[:5]
    assert ticked[0]["name"] == "all_stages"
    assert sorted(ticked[0]["domainDiscrete"]) == [
        f"head: 1 ep, lr 0.01, blocks 0 | top: 1 ep, lr {rate:g}, blocks 1"
        for rate in sorted(RUNS.values())
    ]
    metrics = {(m["name"]["group"], m["name"]["tag"]) for m in experiment["metricInfos"]}
    assert {("validation", "epoch_accuracy"), ("train", "epoch_loss")} <= metrics
    groups = _get(port, "/data/plugin/hparams/session_groups", {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS",
                            "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"metric": {"group": "validation", "tag": "epoch_accuracy"}}],
        "startIndex": 0,
        "sliceSize": 10,
    })["sessionGroups"]
    # One row per run, named after its directory (not a path cut short).
    assert sorted(group["name"] for group in groups) == sorted(RUNS)
    rates = sorted(g["hparams"]["stage2_learning_rate"] for g in groups)
    assert rates == pytest.approx(sorted(RUNS.values()))
    for group in groups:
        values = {(v["name"]["group"], v["name"]["tag"]): v for v in group["metricValues"]}
        final = values[("validation", "epoch_accuracy")]
        assert final["trainingStep"] == 1 and 0.0 <= final["value"] <= 1.0


def _screenshot(port, dashboard, folder):
    path = folder / f"{dashboard}.png"
    profile = folder / f"profile-{dashboard}"
    command = [
        shutil.which("chromium") or shutil.which("chromium-browser"),
        "--headless", "--no-sandbox", "--disable-gpu",
        "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--hide-scrollbars",
        # Let TensorBoard's scripts fetch and draw before the capture.
        "--virtual-time-budget=10000",
        f"--screenshot={path}", "--window-size=1400,900",
        f"http://{HOST}:{port}/#{dashboard}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return path


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


@pytest.mark.parametrize("dashboard", ["scalars", "images", "hparams"])
def test_dashboard_screenshots(tensorboard_port, dashboard, screenshot_dir):
    path = _screenshot(tensorboard_port, dashboard, screenshot_dir)
    assert path.exists() and path.stat().st_size > 20_000, path
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (900, 1400, 3)
    # TensorBoard's orange header bar, not a browser error page.
    header = image[5:55].reshape(-1, 3).astype(int)
    orange = (header[:, 0] > 220) & (header[:, 1] > 100) & (header[:, 1] < 160) & (header[:, 2] < 60)
    assert orange.mean() > 0.5, f"no TensorBoard header in {path}"
    # A drawn dashboard, not a blank page: many distinct colours below it.
    body = image[70:].reshape(-1, 3)
    assert len(np.unique(body, axis=0)) > 100, path
