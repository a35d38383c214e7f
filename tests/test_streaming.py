"""Streaming evaluation, report and prediction: one pass, bounded memory.

Covers: transfer.reporting.streaming (StreamingEvaluation against
scikit-learn and a brute-force top-k), transfer.reporting.report
(evaluate_data), transfer.data.streams (LabelledDataset, read_batches)
through transfer.evaluation_data (labelled_dataset, load_labelled_data)
and transfer.prediction (iter_predictions, predict_files with bad files
in the middle of the stream), transfer.run_report on streamed data,
`transfer predict` (json, jsonl and csv rows written as batches finish,
--skip-bad-files) and
`transfer evaluate`, on a folder of 24 synthetic 32-pixel PNGs; and
the short repr of transfer.data.preflight.PreflightReport (60,000 files).
"""

import csv
import io
import json
import os
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

import transfer
from transfer import evaluation_data
from transfer import prediction
from transfer import workflow
from transfer.cli import main
from transfer.reporting import report
from transfer.reporting.streaming import StreamingEvaluation
from transfer.run_report import write_run_report

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent

NUM_IMAGES = 24


def _write_folder(root, num_images=NUM_IMAGES):
    x, y = transfer.synthetic_images(num_images, 32, 2, seed=3)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = os.path.join(root, ("cat", "dog")[label])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype("uint8")).save(
            os.path.join(folder, f"{i:02d}.png"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream") / "data"
    _write_folder(str(root))
    return root


@pytest.fixture(scope="module")
def run(tiny_run):
    """The shared trained run (classes cat, dog) and its reloaded model."""
    model, config = workflow.load_run(tiny_run["run_dir"])
    return tiny_run["run_dir"], model


def _sklearn_metrics(true, predicted, num_classes):
    from sklearn.metrics import confusion_matrix
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(num_classes))
    per_class = precision_recall_fscore_support(
        true, predicted, labels=labels, zero_division=0)
    averages = {
        average: precision_recall_fscore_support(
            true, predicted, labels=labels, average=average,
            zero_division=0)[:3]
        for average in ("macro", "weighted")
    }
    return per_class, averages, confusion_matrix(true, predicted,
                                                 labels=labels)


@pytest.mark.parametrize("num_classes, batch", [(3, 7), (4, 1), (5, 64)])
def test_accumulator_matches_sklearn_and_brute_force(num_classes, batch):
    rng = np.random.default_rng(num_classes)
    n = 50
    true = rng.integers(0, num_classes - 1, n)  # the last class never occurs
    logits = rng.normal(size=(n, num_classes))
    logits[:5] = 0.0  # equal losses: the earliest come first
    names = [f"c{i}" for i in range(num_classes)]
    evaluation = StreamingEvaluation(names, max_examples=6)
    paths = [f"{i}.png" for i in range(n)]
    images = rng.uniform(0, 255, (n, 4, 4, 3))
    for start in range(0, n, batch):
        stop = start + batch
        evaluation.update(true[start:stop], logits[start:stop],
                          images[start:stop], paths[start:stop])
    metrics = evaluation.result()
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    predicted = probabilities.argmax(-1)
    (precision, recall, f1, support), averages, matrix = _sklearn_metrics(
        true, predicted, num_classes)
    assert metrics["confusion_matrix"] == matrix.tolist()
    assert metrics["accuracy"] == pytest.approx(np.mean(true == predicted))
    for i, name in enumerate(names):
        row = metrics["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["support"] == support[i]
    for average, (p, r, f) in averages.items():
        assert metrics[f"{average}_avg"] == pytest.approx(
            {"precision": p, "recall": r, "f1": f})
    losses = -np.log(probabilities[np.arange(n), true])
    assert metrics["loss"] == pytest.approx(losses.mean())
    order = sorted(range(n), key=lambda i: (-losses[i], i))[:6]
    worst = evaluation.worst()
    assert worst.indices.tolist() == order
    assert worst.paths == [paths[i] for i in order]
    np.testing.assert_allclose(worst.losses, losses[order])
    np.testing.assert_array_equal(worst.images, images[order])
    assert worst.labels.tolist() == true[order].tolist()


def test_accumulator_edges():
    empty = StreamingEvaluation(["a", "b"])
    assert empty.result()["accuracy"] is None and empty.worst() is None
    none_kept = StreamingEvaluation(["a", "b"], max_examples=0)
    none_kept.update(np.eye(2), [[0.2, 0.8], [0.9, 0.1]])  # one-hot labels
    assert none_kept.result()["confusion_matrix"] == [[0, 1], [1, 0]]
    assert none_kept.worst() is None
    with pytest.raises(ValueError, match="Received: max_examples=-1"):
        StreamingEvaluation(["a"], max_examples=-1)
    with pytest.raises(ValueError, match=r"Received: outputs of shape"):
        none_kept.update([0], [[0.2, 0.3, 0.5]])
    with pytest.raises(ValueError, match="Received: labels="):
        none_kept.update([2], [[0.2, 0.8]])
    with pytest.raises(ValueError, match="Received: 1 labels"):
        none_kept.update([0], [[0.2, 0.8]], paths=["x", "y"])


@pytest.mark.all_backends
def test_streaming_equals_in_memory(run, folder):
    _, model = run
    data = evaluation_data.labelled_dataset(str(folder), model, batch_size=5)
    assert len(data.file_paths) == NUM_IMAGES and len(data) == 5
    evaluation = report.evaluate_data(model, data, max_examples=4)
    metrics = evaluation.result()
    # The in-memory path: every image in one array, one `model.predict`.
    x, y = evaluation_data.load_labelled_data(str(folder), model)
    assert x.shape == (NUM_IMAGES, 32, 32, 3)
    predicted = np.asarray(model.predict(x, verbose=0)).argmax(-1)
    _, _, matrix = _sklearn_metrics(y, predicted, 2)
    assert metrics["confusion_matrix"] == matrix.tolist()
    assert metrics["accuracy"] == float(np.mean(predicted == y))
    assert metrics["num_examples"] == NUM_IMAGES
    # The worst examples carry their files, relative to the folder.
    worst = evaluation.worst()
    for path, label, image in zip(worst.paths, worst.labels, worst.images,
                                  strict=True):
        assert path.split(os.sep)[0] == ("cat", "dog")[label]
        on_disk = np.asarray(Image.open(folder / path).convert("RGB"))
        np.testing.assert_allclose(image, on_disk, atol=1e-3)


def test_streamed_report_names_files(run, folder, tmp_path):
    run_dir, model = run
    data = evaluation_data.labelled_dataset(str(folder), model, batch_size=8)
    metrics = write_run_report(
        run_dir, model, data, class_names=["cat", "dog"], split="test",
        output_dir=str(tmp_path / "report"), max_examples=8)
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert {"split", "num_examples", "accuracy", "per_class", "macro_avg",
            "weighted_avg", "class_names", "confusion_matrix",
            "loss"} <= set(saved)
    assert saved["num_examples"] == NUM_IMAGES
    page = (tmp_path / "report" / "report.html").read_text()
    named = [name for name in data.file_paths if f">{name}<" in page]
    assert len(named) == 8
    assert os.path.exists(tmp_path / "report" / "worst_examples.png")
    assert metrics["accuracy"] == saved["accuracy"]


def test_file_changed_after_preflight_is_named(run, folder, tmp_path):
    _, model = run
    copy = tmp_path / "data"
    _write_folder(str(copy))
    data = evaluation_data.labelled_dataset(str(copy), model, batch_size=4)
    victim = data.file_paths[10]
    (copy / victim).write_bytes(b"truncated")  # after the preflight
    batches = 0
    with pytest.raises(ValueError, match="changed after the preflight") as e:
        for _ in data:
            batches += 1
    assert victim in str(e.value) and "Received: " in str(e.value)
    assert batches == 2  # the batches before it were read


def _bad_folder(root):
    photos = root / "photos"
    x, _ = transfer.synthetic_images(7, 32)
    os.makedirs(photos)
    for i, image in enumerate(x):
        keras.utils.save_img(str(photos / f"{i}.png"), image)
    (photos / "3.png").write_text("not an image")  # in the second batch
    return photos


def test_iter_predictions_bad_file_mid_stream(run, tmp_path):
    _, model = run
    photos = _bad_folder(tmp_path)
    results = []
    with pytest.raises(ValueError, match="skip_bad_files=True") as e:
        for batch in prediction.iter_predictions(model, [str(photos)],
                                                 batch_size=2):
            results.extend(r["file"] for r in batch.results)
    assert "3.png" in str(e.value) and "Received: " in str(e.value)
    # Batch [0, 1], then 2 (before the bad file) came out first.
    assert results == [str(photos / f"{i}.png") for i in range(3)]
    kept = prediction.predict_files(model, [str(photos)], batch_size=2,
                                    skip_bad_files=True, top_k=2)
    assert [r["file"] for r in kept] == [
        str(photos / f"{i}.png") for i in (0, 1, 2, 4, 5, 6)]
    # Batch by batch, the same probabilities as one `predict` call.
    x = np.stack([keras.utils.img_to_array(keras.utils.load_img(r["file"]))
                  for r in kept])
    logits = np.asarray(model.predict(x, verbose=0))
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for row, probs in zip(kept, expected, strict=True):
        got = {p["class"]: p["probability"] for p in row["predictions"]}
        assert got["cat"] == pytest.approx(probs[0], abs=1e-5)
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        next(prediction.iter_predictions(model, [str(photos)], batch_size=0))


def test_cli_predict_streams_rows_and_names_bad_file(run, tmp_path, capsys):
    run_dir, _ = run
    photos = _bad_folder(tmp_path)
    argv = ["predict", run_dir, str(photos), "--batch-size", "2"]
    assert main(argv + ["--format", "csv"]) == 2
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["file"] for r in rows] == [
        str(photos / f"{i}.png") for i in range(3)]  # written, kept
    assert "3.png" in err and "--skip-bad-files" in err
    assert main(argv + ["--format", "json"]) == 2
    out, _ = capsys.readouterr()
    assert len(json.loads(out)) == 3  # the array is closed
    assert main(argv + ["--format", "jsonl", "--skip-bad-files"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 6 and all("predictions" in r for r in lines)
    assert "Skipped 1 file(s) that could not be read" in err
    assert str(photos / "3.png") in err
    assert main(argv + ["--skip-bad-files", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert [r["file"] for r in json.loads(out)] == [
        r["file"] for r in lines]


def test_cli_evaluate_streams(run, folder, tmp_path, capsys):
    run_dir, model = run
    output = tmp_path / "evaluation"
    assert main(["evaluate", run_dir, "--data", str(folder), "--output",
                 str(output)]) == 0
    out, err = capsys.readouterr()
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["num_examples"] == NUM_IMAGES
    assert f"{NUM_IMAGES}/{NUM_IMAGES}" in err  # the progress line
    x, y = evaluation_data.load_labelled_data(str(folder), model)
    predicted = np.asarray(model.predict(x, verbose=0)).argmax(-1)
    assert metrics["accuracy"] == float(np.mean(predicted == y))


def test_cli_evaluate_skip_bad_files(run, folder, tmp_path, capsys):
    run_dir, _ = run
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    (data / "cat" / "broken.png").write_bytes(b"not a png")
    args = ["evaluate", run_dir, "--data", str(data), "--output",
            str(tmp_path / "evaluation")]
    # Without the flag: bad input (exit 2) before anything is predicted.
    assert main(args) == 2
    assert "broken.png" in capsys.readouterr().err
    assert not (tmp_path / "evaluation").exists()
    # With it: evaluated without the file, which stderr names.
    assert main([*args, "--skip-bad-files"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["num_examples"] == NUM_IMAGES
    assert "Skipped 1 file(s) that could not be read (--skip-bad-files)" in err
    assert "broken.png" in err


def test_preflight_repr_is_a_summary():
    from transfer.data.preflight import PreflightReport

    files = tuple(f"c{i % 10}/{i:05d}.png" for i in range(60_000))
    bad = tuple((name, "empty file (0 bytes)") for name in files[:50])
    report = PreflightReport("/data", files, bad, {"grayscale": 2}, {}, 7)
    text = repr(report)
    assert len(text) < 400, text
    assert "files=60000" in text and "bad=50 (c0/00000.png: empty" in text
    assert "and 47 more" in text and files[-1] not in text
    assert "bad=0," in repr(PreflightReport("/d", files[:2], (), {}, {}, 0))


@pytest.mark.parametrize("count", [5, 8])
def test_worst_grid_titles_readable_in_every_row(count):
    from transfer.reporting import plots

    rng = np.random.default_rng(count)
    names = ["ankle boot", "a class name far too long for one tile's line"]
    paths = [f"{names[i % 2]}/deep/folder/image_{i:05d}.jpeg"
             for i in range(count)]
    figure = plots.top_losses_figure(
        rng.uniform(0, 255, (count, 32, 32, 3)), np.arange(count) % 2,
        rng.dirichlet(np.ones(2), count), rng.uniform(0, 5, count), names,
        file_paths=paths, title="Worst examples")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    tiles = figure.texts[1:]  # the first is the figure's title
    assert len(tiles) == count
    for i, text in enumerate(tiles):
        lines = text.get_text().splitlines()
        # Class line(s) with both classes and p, the loss, the file.
        loss = [n for n, line in enumerate(lines) if line.startswith("loss ")]
        assert len(loss) == 1 and loss[0] <= 2, lines
        classes = " ".join(lines[: loss[0]])
        assert " / " in classes and classes.endswith(")"), lines
        assert "(p\u00a0=" in classes, lines
        assert lines[-1].endswith(f"image_{i:05d}.jpeg"), lines
    boxes = [t.get_window_extent(renderer) for t in figure.texts]
    images = [a.get_window_extent(renderer) for a in figure.axes]
    for i, box in enumerate(boxes):
        assert figure.bbox.contains(box.x0, box.y0)
        assert figure.bbox.contains(box.x1, box.y1)
        assert not any(box.overlaps(other) for other in boxes[i + 1:])
        assert not any(box.overlaps(image) for image in images)
