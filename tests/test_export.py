"""Exports: self-describing artifacts, dynamic ONNX batch, atomic writes,
the SavedModel signature that takes encoded images.

Covers: transfer.export (exporter, metadata, saved_model), and the
`transfer.json` member `transfer.load_model` reads from exported `.keras`
files. One tiny CNN (32 px, 2 classes) per test; each format is exported
once, on the backends that export it.
"""

import io
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

import transfer
from transfer import _backend
from transfer import export as deploy
from transfer.export import exporter

BACKEND = keras.config.backend()
CLASS_NAMES = ["cat", "dog"]


def _model():
    model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    model.transfer_metadata = dict(model.transfer_metadata,
                                   class_names=CLASS_NAMES)
    return model


def _formats_here():
    return [f for f, able in _backend.EXPORT_BACKENDS.items()
            if BACKEND in able]


def _litert_class_names(path):
    # The README's snippet: the LiteRT schema alone, no transfer import.
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(open(path, "rb").read(), 0)
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name() == b"transfer":
            buffer = model.Buffers(model.Metadata(i).Buffer())
            return json.loads(buffer.DataAsNumpy().tobytes())["class_names"]
    return None


@pytest.mark.parametrize("export_format", deploy.FORMATS)
def test_artifact_carries_its_metadata(export_format, tmp_path, capsys):
    if export_format not in _formats_here():
        pytest.skip(f"{export_format} is not exported on {BACKEND}")
    model = _model()
    path = str(tmp_path / ("model" if export_format == "saved_model" else
                           deploy.FILE_NAMES[export_format]))
    result = deploy.export_model(model, path, export_format)
    assert result["max_abs_diff"] <= 1e-4
    meta = deploy.read_metadata(path)
    assert meta == result["metadata"]
    assert meta["class_names"] == CLASS_NAMES
    assert meta["input"]["shape"] == [32, 32, 3]
    assert meta["input"]["range"] == [0, 255]
    assert meta["preprocessing"]["interpolation"] == "bilinear"
    assert meta["preprocessing"]["inside"]["rescaling"]["scale"] == (
        pytest.approx(1 / 255))
    assert meta["output"] == "logits"
    assert meta["transfer_version"] == transfer.__version__
    assert meta["keras_version"] == keras.__version__
    assert meta["backend"] == BACKEND
    # Only the artifact is left in the folder: no temporary names.
    assert os.listdir(tmp_path) == [os.path.basename(path)]
    if export_format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"])
        custom = session.get_modelmeta().custom_metadata_map
        assert json.loads(custom["class_names"]) == CLASS_NAMES
        # Any batch size, on every backend that exports ONNX.
        name = session.get_inputs()[0].name
        images = deploy.sample_inputs(model, num_samples=3, seed=1)
        expected = np.asarray(model.predict(images, verbose=0))
        for batch in (images[:1], images):
            actual = session.run(None, {name: batch})[0]
            np.testing.assert_allclose(actual, expected[: len(batch)],
                                       atol=1e-4)
    elif export_format == "litert":
        assert _litert_class_names(path) == CLASS_NAMES
    elif export_format == "keras":
        # Away from its run directory, the file still knows its classes.
        loaded = transfer.load_model(path)
        assert loaded.transfer_metadata["class_names"] == CLASS_NAMES
    elif export_format == "saved_model":
        assert os.path.exists(os.path.join(path, "assets", "transfer.json"))
    _predict_with_the_artifact_alone(model, path, tmp_path, capsys)


def _predict_with_the_artifact_alone(model, path, tmp_path, capsys):
    """`transfer predict ARTIFACT images/`: the file's classes, its runtime."""
    from transfer.cli import main

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (3, 32, 32, 3), dtype="uint8")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i}.png")
    capsys.readouterr()
    code = main(["--quiet", "predict", path, str(folder), "--top-k", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(
        model.predict(pixels.astype("float32"), verbose=0)))
    assert [os.path.basename(r["file"]) for r in rows] == [
        "0.png", "1.png", "2.png"]
    for row, probabilities in zip(rows, expected, strict=True):
        got = {p["class"]: p["probability"] for p in row["predictions"]}
        assert sorted(got) == CLASS_NAMES
        np.testing.assert_allclose([got[c] for c in CLASS_NAMES],
                                   probabilities, atol=1e-4)


@pytest.mark.parametrize("existing", [False, True])
def test_failed_export_leaves_nothing(existing, tmp_path, monkeypatch):
    # The parity run fails after the artifact (and its metadata) were
    # written: nothing may look like a good export afterwards.
    def broken_runtime(path, inputs):
        raise RuntimeError("injected failure")

    monkeypatch.setitem(exporter.RUNNERS, "keras", broken_runtime)
    path = tmp_path / "model.keras"
    if existing:
        path.write_bytes(b"previous export")
    with pytest.raises(RuntimeError, match="injected failure"):
        deploy.export_model(_model(), str(path), "keras")
    assert os.listdir(tmp_path) == (["model.keras"] if existing else [])
    if existing:
        assert path.read_bytes() == b"previous export"


@pytest.mark.requires_backend("tensorflow")
def test_failed_saved_model_keeps_previous_directory(tmp_path, monkeypatch):
    def broken_writer(path, meta):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(deploy.metadata.WRITERS, "saved_model", broken_writer)
    path = tmp_path / "saved"
    path.mkdir()
    (path / "old.txt").write_text("previous")
    with pytest.raises(OSError, match="No space left"):
        deploy.export_model(_model(), str(path), "saved_model")
    assert os.listdir(tmp_path) == ["saved"]
    assert os.listdir(path) == ["old.txt"]


def _encoded(image, image_format):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format, quality=90)
    return buffer.getvalue()


@pytest.mark.requires_backend("tensorflow")
@pytest.mark.parametrize("temperature", [None, 0.1])
def test_saved_model_takes_encoded_images(tmp_path, temperature):
    import tensorflow as tf

    from transfer import prediction
    from transfer.data import image_files

    model = _model()
    if temperature is not None:
        # A run's temperature (transfer.calibration): serve_images divides
        # the logits by it, as `transfer predict` does.
        model.transfer_metadata = dict(
            model.transfer_metadata, calibration={"temperature": temperature})
    path = str(tmp_path / "saved")
    deploy.export_model(model, path, "saved_model")
    rng = np.random.default_rng(0)
    # A JPEG at another size (resized in the graph) and a PNG at size.
    images = [(rng.uniform(0, 255, (40, 48, 3)).astype("uint8"), "JPEG"),
              (rng.uniform(0, 255, (32, 32, 3)).astype("uint8"), "PNG")]
    files = []
    for i, (image, image_format) in enumerate(images):
        data = _encoded(image, image_format)
        file = tmp_path / f"{i}.{image_format.lower()}"
        file.write_bytes(data)
        files.append((str(file), data))
    loaded = tf.saved_model.load(path)
    out = loaded.serve_images(tf.constant([data for _, data in files]))
    # What `transfer predict` computes: Pillow decode, bilinear resize.
    pixels = np.stack([image_files.read_image(f, 32) for f, _ in files])
    expected = prediction.probabilities(model, pixels)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected,
                               atol=2e-3)
    if temperature is not None:  # far from the uncalibrated softmax
        plain = transfer.calibration.softmax(model.predict(pixels, verbose=0))
        assert np.abs(plain - expected).max() > 0.02, plain
    best = [CLASS_NAMES[i] for i in expected.argmax(-1)]
    assert [c.decode() for c in out["top_class"].numpy()] == best
    assert [c.decode() for c in out["class_names"].numpy()] == CLASS_NAMES
    signatures = loaded.signatures
    assert {"serve", "serve_images", "serving_default"} <= set(signatures)


QUANTIZED = [("litert", "float16"), ("litert", "int8"), ("onnx", "dynamic"),
             ("onnx", "int8")]


@pytest.mark.parametrize("export_format, quantize", QUANTIZED)
def test_quantized_export_is_judged(export_format, quantize, tmp_path):
    if export_format not in _formats_here():
        pytest.skip(f"{export_format} is not exported on {BACKEND}")
    model = _model()
    calibration, _ = transfer.synthetic_images(100, 32, 2, seed=1)
    x, y = transfer.synthetic_images(16, 32, 2, seed=2)
    path = str(tmp_path / deploy.FILE_NAMES[export_format])
    result = deploy.export_model(
        model, path, export_format, quantize=quantize,
        calibration=calibration if quantize == "int8" else None,
        evaluation=deploy.Evaluation(x, y, max_accuracy_drop=1.0))
    judged = result["evaluation"]
    assert judged["num_images"] == 16
    assert judged["accuracy_drop"] == pytest.approx(
        judged["keras_accuracy"] - judged["artifact_accuracy"])
    assert 0 <= judged["top1_agreement"] <= 1
    assert judged["file_size_bytes"] == os.path.getsize(path)
    assert judged["latency_ms_batch1"] > 0
    # 16 images are one batch of 32: nothing is left to time after warm-up.
    assert judged["images_per_second"] is None
    assert judged["batch_size"] == 32
    assert deploy.read_metadata(path)["quantize"] == quantize


def test_int8_needs_calibration_images(tmp_path):
    format_here = "onnx" if "onnx" in _formats_here() else None
    if format_here is None:
        pytest.skip(f"no int8 export on {BACKEND}")
    with pytest.raises(ValueError, match="Received: 5 calibration"):
        deploy.export_model(
            _model(), str(tmp_path / "m.onnx"), "onnx", quantize="int8",
            calibration=np.zeros((5, 32, 32, 3), "float32"))
    assert not os.listdir(tmp_path)
