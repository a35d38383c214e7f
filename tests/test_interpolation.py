"""Images are resized with the backbone's interpolation, everywhere.

The spec's `interpolation` (a preset's image converter, `bicubic` for
EfficientNet-Lite) reaches the loaders, is recorded with the run and the
data fingerprint, and `evaluate`/`predict` resize with the recorded value.

Covers: transfer.backbones.spec (INTERPOLATIONS, check_interpolation),
transfer.data.images, transfer.data.image_files.read_image,
transfer.data.streams, transfer.data.fingerprint, transfer.workflow,
transfer.evaluation_data, transfer.prediction, transfer.training.fit,
transfer.training.feature_store.
"""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import transfer
from transfer import run_config
from transfer.cli import main
from transfer.data import streams
from transfer.data.fingerprint import differences
from transfer.training import feature_store

# Resizing runs in tf.data (or TensorFlow's resize) on every backend.
pytestmark = pytest.mark.backend_independent

SIZE = 32


def sharp_image(seed):
    """A 6x6 RGB image with a hard vertical edge and one bright pixel."""
    rng = np.random.default_rng(seed)
    image = np.zeros((6, 6, 3), "uint8")
    image[:, 3:] = 255
    image[rng.integers(6), rng.integers(3)] = (255, 0, 128)
    return image


def resized(image, method):
    return tf.image.resize(image.astype("float32"), (SIZE, SIZE),
                           method=method).numpy()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of four 6x6 sharp-edged PNGs."""
    root = tmp_path_factory.mktemp("interpolation") / "data"
    for i in range(8):
        path = root / "ab"[i % 2] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sharp_image(i)).save(path)
    return root


def _folder_files(folder):
    return [os.path.join(root, name) for root, _, names in os.walk(folder)
            for name in names if name.endswith(".png")]


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_spec_interpolation_changes_the_loaded_pixels(folder):
    nearest = dataclasses.replace(transfer.get_backbone_spec("tiny_cnn"),
                                  interpolation="nearest")
    bilinear = transfer.get_backbone_spec("tiny_cnn")
    assert bilinear.interpolation == "bilinear"
    loaded = {}
    for spec in (nearest, bilinear):
        train, _, _ = transfer.load_image_folder(
            str(folder), image_size=SIZE, validation_split=0, shuffle=False,
            interpolation=spec.interpolation, verbose=0)
        images = np.concatenate([x for x, _ in train.as_numpy_iterator()])
        expected = np.stack([resized(pixels(p), spec.interpolation)
                             for p in train.file_paths])
        np.testing.assert_allclose(images, expected, atol=1e-3)
        assert train.transfer_fingerprint["interpolation"] == (
            spec.interpolation)
        loaded[spec.interpolation] = images
        # The prediction path reads a file the same way.
        first = train.file_paths[0]
        np.testing.assert_allclose(
            transfer.data.image_files.read_image(
                first, SIZE, interpolation=spec.interpolation),
            expected[0], atol=1e-3)
        model = transfer.build_classifier(spec, 2, weights=None)
        assert model.transfer_metadata["interpolation"] == spec.interpolation
    assert not np.allclose(loaded["nearest"], loaded["bilinear"], atol=1.0)
    # Nearest keeps the image's own values: no blend across the edge.
    assert set(np.unique(loaded["nearest"])) <= {0.0, 128.0, 255.0}


def test_make_dataset_resizes_with_the_interpolation():
    x = np.stack([sharp_image(i) for i in range(2)])
    for method in ("nearest", "bicubic"):
        ds = transfer.make_dataset(x, image_size=SIZE, interpolation=method)
        np.testing.assert_allclose(
            next(iter(ds)).numpy(), np.stack([resized(i, method) for i in x]),
            atol=1e-3)
        assert ds.transfer_fingerprint["interpolation"] == method


def test_unknown_interpolation_is_refused_naming_the_choices(folder,
                                                             tmp_path):
    needle = r"Unknown interpolation 'cubicx'.*'bicubic'.*Received: "
    with pytest.raises(ValueError, match=needle + "interpolation='cubicx'"):
        transfer.load_image_folder(str(folder), image_size=SIZE,
                                   interpolation="cubicx", verbose=0)
    with pytest.raises(ValueError, match=needle):
        transfer.make_dataset(np.zeros((2, 6, 6)), image_size=SIZE,
                              interpolation="cubicx")
    with pytest.raises(ValueError, match=needle):
        dataclasses.replace(transfer.get_backbone_spec("tiny_cnn"),
                            interpolation="cubicx")
    with pytest.raises(ValueError, match=needle):
        run_config.resolve_config(None, {"data": "d", "backbone": "tiny_cnn",
                                         "interpolation": "cubicx"})
    with pytest.raises(ValueError, match=needle):
        next(streams.read_batches(["x.png"], "image", SIZE, 4,
                                  interpolation="cubicx"))


def test_cli_refuses_a_bad_interpolation_before_training(folder, tmp_path,
                                                         capsys):
    run = tmp_path / "refused"
    code = main(["--quiet", "train", "--data", str(folder), "--backbone",
                 "tiny_cnn", "--weights", "none", "--interpolation", "cubicx",
                 "--output", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Unknown interpolation 'cubicx'" in err and "'bicubic'" in err
    assert "Received: --interpolation cubicx" in err
    assert not run.exists()


def test_run_records_interpolation_and_predict_uses_it(folder, tmp_path,
                                                       capsys):
    (tmp_path / "recipe.yaml").write_text(
        "image_size: 32\nbatch_size: 4\nvalidation_split: 0\naugment: false\n"
        "stages:\n  - {name: head, epochs: 1, learning_rate: 1.0e-3}\n")
    run = tmp_path / "run"
    code = main(["--quiet", "train", "--data", str(folder), "--backbone",
                 "tiny_cnn", "--weights", "none", "--interpolation",
                 "nearest", "--config", str(tmp_path / "recipe.yaml"),
                 "--output", str(run)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    assert config["interpolation"] == manifest["interpolation"] == "nearest"
    fingerprint = json.loads(
        (run / "checkpoints" / "fingerprint.json").read_text())
    assert fingerprint["data"]["training"]["interpolation"] == "nearest"

    model, _ = transfer.workflow.load_run(str(run))
    assert model.transfer_metadata["interpolation"] == "nearest"
    data = transfer.evaluation_data.labelled_dataset(str(folder), model)
    images = np.concatenate([np.asarray(x) for x, _ in data])
    files = [os.path.join(folder, name) for name in data.file_paths]
    np.testing.assert_allclose(
        images, np.stack([resized(pixels(p), "nearest") for p in files]),
        atol=1e-3)
    result = transfer.prediction.predict_files(model, files[:2], top_k=2)
    # Calibrated: the temperature fitted on the run's validation split.
    temperature = transfer.calibration.temperature(model)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(
        np.stack([resized(pixels(p), "nearest") for p in files[:2]]),
        verbose=0) / temperature))
    for row, probabilities in zip(result, expected, strict=True):
        got = {p["class"]: p["probability"] for p in row["predictions"]}
        np.testing.assert_allclose([got["a"], got["b"]], probabilities,
                                   rtol=1e-4, atol=1e-6)

    # `transfer serve`, the export's metadata and its int8 calibration
    # images resize as the run trained, too.
    calibration = transfer.evaluation_data.training_images(
        str(run), config, model, max_images=3)
    expected_calibration = [resized(pixels(p), "nearest") for p in
                            sorted(p for p in _folder_files(folder))]
    assert any(np.allclose(calibration[0], e, atol=1e-3)
               for e in expected_calibration)
    assert not any(np.allclose(calibration[0], resized(pixels(p), "bilinear"),
                               atol=1e-3) for p in _folder_files(folder))
    meta = transfer.export.metadata.artifact_metadata(model, "onnx")
    assert meta["preprocessing"]["interpolation"] == "nearest"
    testclient = pytest.importorskip("starlette.testclient")
    from transfer.serving import app as serving

    with testclient.TestClient(serving.create_app(model)) as client:
        for path, row in zip(files[:2], result, strict=True):
            answer = client.post("/predict", files={
                "image": ("x.png", open(path, "rb").read())})
            assert answer.status_code == 200, answer.text
            got = {p["class"]: p["probability"]
                   for p in answer.json()["predictions"]}
            want = {p["class"]: p["probability"] for p in row["predictions"]}
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-4,
                                           atol=1e-6)

    # A run from before the field: no `interpolation` in its manifest or
    # config. It loads, and evaluates bilinearly, as it trained.
    del manifest["interpolation"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    old, _ = transfer.workflow.load_run(str(run))
    assert transfer._model_info.interpolation(old) == "bilinear"
    data = transfer.evaluation_data.labelled_dataset(str(folder), old)
    np.testing.assert_allclose(
        np.concatenate([np.asarray(x) for x, _ in data]),
        np.stack([resized(pixels(p), "bilinear") for p in files]), atol=1e-3)


def test_resume_compares_interpolation_old_fingerprints_are_bilinear():
    old = {"training": {"kind": "image_folder", "image_size": 32}}
    same = {"training": dict(old["training"], interpolation="bilinear")}
    other = {"training": dict(old["training"], interpolation="nearest")}
    assert differences(old, same) == []
    assert differences(old, other) == ["interpolation 'bilinear' -> 'nearest'"]
    assert differences(same, other) == ["interpolation 'bilinear' -> 'nearest'"]


def test_fit_records_the_data_interpolation_and_cache_keys_differ(tmp_path):
    x = np.stack([sharp_image(i) for i in range(8)])
    y = np.arange(8) % 2
    cache = tmp_path / "features"

    def fit(method, name):
        keras.utils.set_random_seed(0)
        model = transfer.build_classifier("tiny_cnn", 2, weights=None)
        data = transfer.make_dataset(x, y, image_size=SIZE, batch_size=4,
                                     interpolation=method)
        transfer.fit_recipe(
            model, [transfer.Stage("head", 1, 1e-3)], data,
            run_dir=str(tmp_path / name), verbose=0,
            feature_cache_dir=str(cache))
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert model.transfer_metadata["interpolation"] == method
        assert manifest["interpolation"] == method
        return manifest["stages"][0]["feature_cache"]

    nearest = fit("nearest", "a")
    bilinear = fit("bilinear", "b")
    again = fit("nearest", "c")
    assert (nearest["disk"], bilinear["disk"], again["disk"]) == (
        "miss", "miss", "hit")
    assert nearest["key"] == again["key"] != bilinear["key"]
    # The key hashes the resized pixels, which differ.
    digests = [
        feature_store.data_digest(transfer.make_dataset(
            x, y, image_size=SIZE, interpolation=method), ordered=True)[0]
        for method in ("nearest", "bilinear")
    ]
    assert digests[0] != digests[1]
