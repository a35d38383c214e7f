"""Nothing is let in: model files that would run code are refused, and a
marker file that the would-be payload creates shows that none ran.

Covers: transfer.saving, transfer.weights.pth.
"""

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import warnings
import zipfile

import keras
import numpy as np
import pytest

import transfer

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent

PACKAGE = pathlib.Path(transfer.__file__).parent


def _rewrite(source, target, edit=None, extra=None):
    """Copies a .keras archive, editing config.json and adding members."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json" and edit is not None:
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            dst.writestr(info, data)
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return target


@pytest.fixture
def good_file(tiny_model, tmp_path):
    return transfer.save_model(tiny_model, str(tmp_path / "good.keras"))


@pytest.fixture
def lambda_file(tmp_path, monkeypatch):
    """A model whose Lambda layer touches $PAYLOAD_MARKER when it runs."""
    monkeypatch.setenv("PAYLOAD_MARKER", str(tmp_path / "built"))
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(
        lambda x: (
            __import__("pathlib").Path(
                __import__("os").environ["PAYLOAD_MARKER"]).touch(),
            x,
        )[1]
    )(inputs)
    model = keras.Model(inputs, outputs)
    assert (tmp_path / "built").exists()  # the payload is real
    path = str(tmp_path / "lambda.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
    return path, marker


def test_lambda_layer_is_refused_and_nothing_runs(lambda_file):
    path, marker = lambda_file
    with pytest.raises(ValueError, match=r"Refusing to load.*Lambda.*Received: "):
        transfer.load_model(path)
    with pytest.raises(ValueError, match="Refusing to load"):
        transfer.load_model(path, compile=True)
    assert not marker.exists()


def test_unsafe_keras_load_would_run_the_payload(lambda_file):
    """The control: Keras with safe_mode=False does run it."""
    path, marker = lambda_file
    script = (
        "import sys, keras; keras.saving.load_model(sys.argv[1], "
        "safe_mode=False)(keras.ops.ones((1, 4)))"
    )
    subprocess.run([sys.executable, "-c", script, path], check=True,
                   capture_output=True, timeout=300)
    assert marker.exists()


def test_refused_even_after_enable_unsafe_deserialization(lambda_file):
    path, marker = lambda_file
    script = textwrap.dedent("""
        import sys, keras, transfer
        keras.config.enable_unsafe_deserialization()
        try:
            transfer.load_model(sys.argv[1])
        except ValueError as e:
            print("refused:", e)
    """)
    result = subprocess.run([sys.executable, "-c", script, path],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert "refused: Refusing to load" in result.stdout, result.stderr[-2000:]
    assert not marker.exists()


def test_arbitrary_function_or_class_is_refused(good_file, tmp_path, monkeypatch):
    marker = tmp_path / "payload-ran"
    (tmp_path / "payload_mod.py").write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(marker)!r}).touch()  # on import
        def boom(x):
            pathlib.Path({str(marker)!r}).touch()
            return x
        class Evil:
            def __init__(self, *args, **kwargs):
                pathlib.Path({str(marker)!r}).touch()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))

    def activation(config):
        for layer in config["config"]["layers"]:
            if layer["config"]["name"] == "predictions":
                layer["config"]["activation"] = {
                    "module": "payload_mod", "class_name": "function",
                    "config": "boom", "registered_name": "boom",
                }

    def layer_class(config):
        for layer in config["config"]["layers"]:
            if layer["config"]["name"] == "pooler":
                layer["module"] = "payload_mod"
                layer["class_name"] = "Evil"
                layer["registered_name"] = None

    def os_system(config):
        config["compile_config"] = {"loss": {
            "module": "os", "class_name": "function", "config": "system",
            "registered_name": None}}

    for name, edit, words in [
        ("function", activation, r"function 'payload_mod\.boom'"),
        ("class", layer_class, r"class 'payload_mod\.Evil'"),
        ("system", os_system, r"function 'os\.system'"),
    ]:
        path = _rewrite(good_file, str(tmp_path / f"{name}.keras"), edit)
        with pytest.raises(ValueError, match=rf"Refusing to load.*{words}.*Received: "):
            transfer.load_model(path, compile=True)
    assert not marker.exists()
    assert "payload_mod" not in sys.modules


def test_zip_member_outside_the_archive_is_refused(good_file, tmp_path):
    for name in ("../escape.txt", "/tmp/absolute.txt", "assets/../../up.txt",
                 "C:/windows.txt", "..\\back.txt"):
        path = _rewrite(good_file, str(tmp_path / "bad.keras"),
                        extra={name: b"payload"})
        with pytest.raises(ValueError, match=r"Refusing to load.*outside the archive.*Received: member names"):
            transfer.load_model(path)
    assert not (tmp_path.parent / "escape.txt").exists()
    assert not (tmp_path.parent / "up.txt").exists()


def test_registered_custom_objects_still_load(tiny_model, tmp_path):
    @keras.saving.register_keras_serializable(package="tests_safety")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Scale()(inputs))
    model.save(tmp_path / "custom.keras")
    reloaded = transfer.load_model(tmp_path / "custom.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(np.ones((1, 3), "float32"))), 2.0
    )


def test_library_never_enables_unsafe_deserialization():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name == "enable_unsafe_deserialization":
                    calls.append(str(path))
                for keyword in node.keywords:
                    if keyword.arg == "safe_mode" and not (
                        isinstance(keyword.value, ast.Constant)
                        and keyword.value.value is True
                    ):
                        calls.append(f"{path}: safe_mode=")
    assert calls == []
