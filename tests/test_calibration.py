"""Calibrated probabilities and `unknown` (transfer.calibration).

Covers: the temperature fit, ECE and OOD scores on NumPy arrays; the
record `fit_recipe` keeps (manifest, metadata after `load_run`,
reliability diagram, T = 1 without validation data, a failed calibration
that keeps the run); calibrated probabilities from the run's model, its
`.keras` export and `transfer serve`; `reject_below` and
`choose_reject_threshold`; `--reject-below` checked before any model loads.
"""

import io
import json
import os
import sys

import keras
import numpy as np
import pytest

import transfer
from transfer import calibration
from transfer import prediction
from transfer import workflow
from transfer.cli import main


def _labelled_logits(temperature, n=4000, classes=4, seed=0):
    """Logits whose labels are drawn from softmax(logits / temperature):
    the temperature that calibrates them is `temperature`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 3.0
    probs = calibration.softmax(logits, temperature)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


@pytest.mark.backend_independent
@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_true_temperature(true_t):
    logits, labels = _labelled_logits(true_t)
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.1)
    # The fitted T has the lowest NLL, and calibrates: ECE goes down.
    nll = calibration.negative_log_likelihood
    assert nll(logits, labels, fitted) <= nll(logits, labels, 1.0) + 1e-9
    if true_t != 1.0:
        ece = calibration.expected_calibration_error
        assert ece(calibration.softmax(logits, fitted), labels) < ece(
            calibration.softmax(logits), labels)


@pytest.mark.backend_independent
def test_ece_bins_and_ood_scores():
    probs = np.array([[0.95, 0.05], [0.55, 0.45], [0.3, 0.7], [0.06, 0.94]])
    labels = np.array([0, 1, 1, 0])
    confidence, accuracy, count = calibration.reliability_bins(probs, labels)
    assert len(count) == calibration.ECE_BINS == 15
    assert count.sum() == 4
    # 0.55 -> bin 8 ((8/15, 9/15]); 0.94 and 0.95 -> bin 14 (shared).
    assert count[8] == 1 and count[14] == 2 and accuracy[8] == 0.0
    assert confidence[14] == pytest.approx(0.945) and accuracy[14] == 0.5
    expected = (0.55 + abs(1 - 0.7) + abs(0.5 - 0.945) * 2) / 4
    assert calibration.expected_calibration_error(probs, labels) == (
        pytest.approx(expected))
    logits = np.array([[3.0, 1.0, -1.0], [0.1, 0.0, 0.2]])
    energy = calibration.ood_scores(logits, "energy", temperature=2.0)
    np.testing.assert_allclose(
        energy, -2.0 * np.log(np.exp(logits / 2.0).sum(-1)))
    np.testing.assert_allclose(calibration.ood_scores(logits, "max_logit"),
                               [-3.0, -0.2])
    # The confident row is more in-distribution (lower) by both scores.
    assert energy[0] < energy[1]
    with pytest.raises(ValueError, match="Received: score='entropy'"):
        calibration.ood_scores(logits, "entropy")


@pytest.mark.backend_independent
@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, float("nan"), True, "0.5"])
def test_reject_below_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match="Received: reject_below="):
        calibration.check_reject_below(bad)


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """A run whose validation labels are a quarter wrong: the NLL has a
    minimum (unlike `tiny_run`'s, all right), away from T = 1."""
    keras.utils.set_random_seed(1337)
    run_dir = str(tmp_path_factory.mktemp("calibration") / "run")
    x, y = transfer.synthetic_images(16, 32, 2, seed=0)
    noisy = y.copy()
    noisy[:4] = 1 - noisy[:4]
    model = transfer.build_classifier("tiny_cnn", 2, weights=None,
                                      dropout=0.0)
    transfer.fit_recipe(
        model, [transfer.Stage("head", 1, 1e-2, 0),
                transfer.Stage("top", 2, 5e-3, 1)], (x, y),
        validation_data=(x, noisy), run_dir=run_dir, batch_size=8,
        class_names=["cat", "dog"], verbose=0)
    keras.backend.clear_session()
    return run_dir


def test_a_perfect_validation_set_keeps_t_1():
    # Every example right: the NLL falls as T -> 0, no minimum to trust.
    model = _logit_model()
    x = np.random.default_rng(0).normal(size=(50, 2)).astype("float32")
    record = calibration.calibrate(model, (x, x.argmax(-1)))
    assert record["fitted"] is False and record["temperature"] == 1.0
    assert "no minimum" in record["reason"] and "accuracy 1.000" in (
        record["reason"])
    assert record["ece_before"] == record["ece_after"]


def test_fit_recipe_records_calibration_and_predict_applies_it(
        noisy_run, tmp_path):
    run_dir = noisy_run
    manifest = json.loads(open(os.path.join(run_dir, "manifest.json")).read())
    record = manifest["calibration"]
    assert record["fitted"] is True and record["num_examples"] == 16
    # Under-confident after 3 tiny epochs: T well away from 1.
    assert not 0.8 < record["temperature"] < 1.25, record
    assert record["temperature"] > 0 and record["ece_bins"] == 15
    assert {"ece_before", "ece_after", "nll_before", "nll_after",
            "ood_threshold"} <= set(record)
    assert record["nll_after"] <= record["nll_before"] + 1e-6
    assert record["ood_score"] == calibration.OOD_SCORE
    diagram = os.path.join(run_dir, record["reliability_diagram"])
    assert open(diagram, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    model, _ = workflow.load_run(run_dir)
    assert model.transfer_metadata["calibration"] == record
    # Predictions are softmax(logits / T), the ranking unchanged.
    x, _ = transfer.synthetic_images(4, 32, 2, seed=5)
    logits = np.asarray(model.predict(x, verbose=0), "float64")
    t = record["temperature"]
    np.testing.assert_allclose(prediction.image_probabilities(model, x),
                               calibration.softmax(logits, t), atol=1e-6)
    # The `.keras` export carries it: the artifact predicts the same.
    path = str(tmp_path / "model.keras")
    transfer.export.export_model(model, path, "keras")
    artifact = transfer.export.open_artifact(path)
    assert artifact.transfer_metadata["calibration"] == record
    assert transfer.load_model(path).transfer_metadata["calibration"] == (
        record)
    np.testing.assert_allclose(prediction.image_probabilities(artifact, x),
                               calibration.softmax(logits, t), atol=1e-4)


def test_without_validation_data_no_temperature(tmp_path, tiny_data, caplog):
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    caplog.set_level("INFO", logger="transfer.training.finish")
    transfer.fit_recipe(model, [transfer.Stage("head", 1, 1e-3, 0)],
                        tiny_data, run_dir=str(tmp_path / "run"),
                        batch_size=8, verbose=0)
    record = model.transfer_metadata["calibration"]
    assert record == calibration.not_fitted("no validation data")
    assert "no temperature fitted (T = 1)" in caplog.text
    x = tiny_data[0][:2]
    logits = np.asarray(model.predict(x, verbose=0), "float64")
    np.testing.assert_allclose(prediction.image_probabilities(model, x),
                               calibration.softmax(logits), atol=1e-6)


def test_a_failed_calibration_keeps_the_run(tmp_path, tiny_data,
                                            monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(calibration, "calibrate", broken)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    run_dir = str(tmp_path / "run")
    transfer.fit_recipe(model, [transfer.Stage("head", 1, 1e-3, 0)],
                        tiny_data, validation_data=tiny_data,
                        run_dir=run_dir, batch_size=8, verbose=0)
    manifest = json.loads(open(os.path.join(run_dir, "manifest.json")).read())
    assert manifest["calibration"]["fitted"] is False
    assert "out of memory" in manifest["calibration"]["reason"]
    assert os.path.exists(os.path.join(run_dir, "model.keras"))


def _logit_model(temperature=1.0, threshold=None):
    """Dense(2) on 2 inputs whose logits are the inputs themselves."""
    model = keras.Sequential([keras.Input((2,)),
                              keras.layers.Dense(2, use_bias=False)])
    model.layers[-1].set_weights([np.eye(2, dtype="float32")])
    record = {"temperature": temperature}
    if threshold is not None:
        record.update(ood_score="max_logit", ood_threshold=threshold)
    model.transfer_metadata = {"calibration": record}
    return model


def test_unknown_reasons_and_choose_reject_threshold():
    model = _logit_model(temperature=2.0, threshold=-1.0)
    outputs = np.array([[4.0, 0.0], [1.6, 1.5], [0.3, 0.2]])
    probs, reasons, scores = calibration.unknown_reasons(model, outputs, 0.6)
    np.testing.assert_allclose(probs, calibration.softmax(outputs, 2.0))
    # Row 2's largest logit (0.3) is under 1: out of distribution; row 1
    # is in, but its calibrated top probability is 0.51.
    assert reasons == [None, "low_confidence", "out_of_distribution"]
    np.testing.assert_allclose(scores, [-4.0, -1.6, -0.3])
    # 10 examples, 1 out of distribution, the others more confident as i
    # grows: rate 0.3 adds the two least confident of the others.
    x = np.array([[0.1, 0.0]] + [[2.0 + 0.5 * i, 2.0] for i in range(1, 10)],
                 "float32")
    y = np.zeros(10, "int64")
    p = calibration.choose_reject_threshold(model, (x, y), rate=0.3)
    _, reasons, _ = calibration.unknown_reasons(model, x, p)
    assert reasons[:3] == ["out_of_distribution", "low_confidence",
                           "low_confidence"]
    assert reasons[3:] == [None] * 7
    with pytest.raises(ValueError, match="Received: rate=1.5"):
        calibration.choose_reject_threshold(model, (x, y), rate=1.5)
    with pytest.raises(ValueError, match="alone labels 10.0%"):
        calibration.choose_reject_threshold(model, (x, y), rate=0.1)


def test_predict_and_serve_say_unknown(noisy_run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    x, _ = transfer.synthetic_images(3, 32, 2, seed=7)
    for i, image in enumerate(x):
        keras.utils.save_img(str(images / f"{i}.png"), image)
    model, _ = workflow.load_run(noisy_run)
    plain = prediction.predict_files(model, [str(images)], top_k=2)
    assert all("label" not in r for r in plain)
    # Above any top probability of 2 classes: every image is unknown.
    rejected = prediction.predict_files(model, [str(images)], top_k=2,
                                        reject_below=0.999999)
    assert [r["label"] for r in rejected] == ["unknown"] * 3
    assert [r["predictions"] for r in rejected] == [
        r["predictions"] for r in plain]
    out = io.StringIO()
    previous, sys.stdout = sys.stdout, out
    try:
        code = main(["--quiet", "predict", noisy_run, str(images),
                     "--reject-below", "0.999999", "--format", "csv"])
    finally:
        sys.stdout = previous
    assert code == 0
    rows = out.getvalue().splitlines()
    assert rows[0] == "file,rank,class,probability,label"
    assert all(row.endswith(",unknown") for row in rows[1:])
    testclient = pytest.importorskip("starlette.testclient")
    from transfer.serving import app as serving

    app = serving.create_app(model, reject_below=0.999999)
    with testclient.TestClient(app) as client:
        answer = client.post("/predict", files={
            "image": ("0.png", (images / "0.png").read_bytes())}).json()
        assert client.get("/health").json()["temperature"] == (
            calibration.temperature(model))
    assert answer["label"] == "unknown"
    assert answer["unknown_reason"] in ("low_confidence",
                                        "out_of_distribution")
    assert answer["predictions"][0]["probability"] == pytest.approx(
        plain[0]["predictions"][0]["probability"], abs=1e-5)


@pytest.mark.backend_independent
@pytest.mark.parametrize("command", ["predict", "serve"])
def test_cli_refuses_reject_below_before_loading(tmp_path, capsys, command):
    # No run exists at all: the flag is refused first.
    argv = [command, str(tmp_path / "no_run")]
    if command == "predict":
        argv.append(str(tmp_path))
    code = main([*argv, "--reject-below", "1.5"])
    err = capsys.readouterr().err
    assert code == 2
    if command == "serve" and "serve extra" in err:
        pytest.skip("the serve extra is not installed")
    assert "--reject-below takes a probability strictly between 0 and 1" in (
        err)
    assert "Received: --reject-below 1.5" in err
