"""What a run writes for TensorBoard, read back with its EventAccumulator.

The same tags, steps and image shapes are asserted on every backend.

Covers: transfer.tensorboard, transfer.reporting, transfer.training.callbacks.
"""

import io
import json
import logging
import os
import shutil
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

import transfer
from transfer.reporting import plots
from transfer.tensorboard import callbacks as tcb

# Run directory under `logs` -> {tag: plugin}, as every backend writes it.
EXPECTED_TAGS = {
    ".": {"_hparams_/session_start_info": "hparams", "manifest": "text"},
    "train": {
        "epoch_loss": "scalars",
        "epoch_accuracy": "scalars",
        "epoch_learning_rate": "scalars",
    },
    # No `evaluation_*_vs_iterations`: their steps restart with each stage.
    "validation": {"epoch_loss": "scalars", "epoch_accuracy": "scalars"},
    "stage": {
        "stage": "scalars",
        "trainable_params": "scalars",
        "stage_summary": "text",
        "freeze_plan": "text",
        "model_summary": "text",
    },
    "train_images": {"training_inputs": "images"},
    "validation_images": {"confusion_matrix": "images", "top_losses": "images"},
}


def read_run(path):
    """{tag: {"plugin", "steps", "values"}} of one run directory."""
    sizes = {kind: 0 for kind in event_accumulator.DEFAULT_SIZE_GUIDANCE}
    accumulator = event_accumulator.EventAccumulator(path, size_guidance=sizes)
    accumulator.Reload()
    tags = accumulator.Tags()
    # tf.summary (TF2) stores every summary as a tensor with plugin metadata.
    assert not tags["scalars"] and not tags["images"]
    result = {}
    for tag in tags["tensors"]:
        # Event files of one directory load in file-name order, and TF names
        # files by wall-clock second then a process-wide counter: two files
        # made in the same second (sub-second stages, as here) can load out
        # of step order. Compare by step.
        events = sorted(accumulator.Tensors(tag), key=lambda e: e.step)
        result[tag] = {
            "plugin": accumulator.SummaryMetadata(tag).plugin_data.plugin_name,
            "content": accumulator.SummaryMetadata(tag).plugin_data.content,
            "steps": [e.step for e in events],
            "values": [tensor_util.make_ndarray(e.tensor_proto) for e in events],
        }
    return result


def read_logs(log_dir):
    runs = {}
    for root, _, files in os.walk(log_dir):
        if any(f.startswith("events.out.tfevents") for f in files):
            runs[os.path.relpath(root, log_dir)] = read_run(root)
    return runs


def png_shapes(values):
    """(height, width, channels) of each image event, checked against PNG."""
    shapes = []
    for value in values:
        width, height, encoded = int(value[0]), int(value[1]), value[2]
        image = np.asarray(Image.open(io.BytesIO(encoded)))
        assert image.shape[:2] == (height, width)
        shapes.append(image.shape)
    return shapes


def text(entry, index=-1):
    return entry["values"][index].item().decode()


@pytest.fixture(scope="module")
def logs(tiny_run):
    return read_logs(os.path.join(tiny_run["run_dir"], "logs"))


def test_run_writes_the_same_tags_on_every_backend(logs):
    found = {
        run: {tag: entry["plugin"] for tag, entry in tags.items()}
        for run, tags in logs.items()
    }
    assert found == EXPECTED_TAGS


def test_one_step_axis_across_stages(logs):
    # Stage "head" is epoch 0, stage "top" epochs 1 and 2.
    for run in ("train", "validation"):
        for tag in ("epoch_loss", "epoch_accuracy"):
            assert logs[run][tag]["steps"] == [0, 1, 2], (run, tag)
    rates = [float(v) for v in logs["train"]["epoch_learning_rate"]["values"]]
    np.testing.assert_allclose(rates, [1e-2, 5e-3, 5e-3], rtol=1e-5)
    stage = logs["stage"]
    assert stage["stage"]["steps"] == [0, 1, 2]
    assert [float(v) for v in stage["stage"]["values"]] == [1, 2, 2]
    params = [int(v) for v in stage["trainable_params"]["values"]]
    assert params[0] == 34 and params[1] == params[2] > 34
    for tag in ("stage_summary", "freeze_plan", "model_summary"):
        assert stage[tag]["steps"] == [0, 1], tag
    assert logs["validation_images"]["confusion_matrix"]["steps"] == [0, 1, 2]
    assert logs["validation_images"]["top_losses"]["steps"] == [0, 2]
    assert logs["train_images"]["training_inputs"]["steps"] == [0]
    assert logs["."]["manifest"]["steps"] == [2]


def test_no_curve_restarts_at_a_stage(logs):
    # keras.callbacks.TensorBoard steps `evaluation_*_vs_iterations` by the
    # optimizer's iterations, which restart with each stage's fresh Adam
    # (steps 2, 2, 4 here): on one chart a two-stage run looked shorter.
    tags = [(run, tag) for run, entries in logs.items() for tag in entries]
    assert not [t for t in tags if t[1].startswith("evaluation_")], tags
    for run, entries in logs.items():
        for tag, entry in entries.items():
            if entry["plugin"] == "scalars":  # one value per step
                assert entry["steps"] == [0, 1, 2], (run, tag)


def test_image_shapes(logs):
    images = logs["validation_images"]
    # 2 classes: a 4 x 4 inch figure at 100 dpi.
    assert png_shapes(images["confusion_matrix"]["values"]) == [(400, 400, 3)] * 3
    # 16 validation images, 4 per row of 2.5 inches (+ 0.3 margins); each
    # row 2.57 inches (two text lines, image, gap), + 0.58 title and margin.
    assert png_shapes(images["top_losses"]["values"]) == [(1086, 1030, 3)] * 2
    # 16 images of 32 px, enlarged to 64 px, 4 x 4 with 2 px padding.
    inputs = logs["train_images"]["training_inputs"]["values"]
    assert png_shapes(inputs) == [(266, 266, 3)]


def test_text_entries(logs, tiny_run):
    stage = logs["stage"]
    # Epochs as Keras's progress bar counts them, steps from 0.
    head, top = text(stage["stage_summary"], 0), text(stage["stage_summary"])
    assert "Stage 1 `head` starts at epoch 1 (step 0)" in head
    assert "| epochs | 1 to 1 |" in head
    assert "Stage 2 `top` starts at epoch 2 (step 1)" in top
    assert "| epochs | 2 to 3 |" in top
    assert "| TensorBoard steps | 1 to 2 |" in top
    assert "| learning rate | 0.005 (constant) |" in text(stage["stage_summary"])
    head_plan, top_plan = text(stage["freeze_plan"], 0), text(stage["freeze_plan"])
    assert "| block2 | frozen |" in head_plan and "| head | train |" in head_plan
    assert "| block2 | train | 1,728 |" in top_plan
    assert "`block2_conv`" in top_plan
    assert "predictions (Dense)" in text(stage["model_summary"])
    manifest_text = text(logs["."]["manifest"])
    manifest = json.loads(manifest_text.split("```json\n")[1].split("\n```")[0])
    with open(os.path.join(tiny_run["run_dir"], "manifest.json")) as f:
        assert manifest == json.load(f)
    assert manifest["backend"] == keras.config.backend()


def test_hparams_session(logs, tiny_run):
    entry = logs["."]["_hparams_/session_start_info"]
    info = hparams_metadata.parse_session_start_info_plugin_data(entry["content"])
    hparams = {
        name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        for name, value in info.hparams.items()
    }
    # The run directory's name: the dashboard cut whole paths to one prefix.
    assert info.group_name == os.path.basename(tiny_run["run_dir"]) == "run"
    assert hparams == {
        "backend": keras.config.backend(),
        "backbone": "tiny_cnn",
        "weights": "none",
        "weights_source": "tests",
        "image_size": 32,
        "batch_size": 8,
        "num_stages": 2,
        "all_stages": "head: 1 ep, lr 0.01, blocks 0 | top: 2 ep, lr 0.005, "
                      "blocks 1",
        "stage1_name": "head",
        "stage1_epochs": 1,
        "stage1_learning_rate": pytest.approx(1e-2),
        "stage1_trainable_blocks": "0",
        "stage1_schedule": "constant",
        "stage1_optimizer": "adam",
        "stage1_weight_decay": 0.0,
        "stage1_gradient_accumulation_steps": 1,
        "stage1_loss": "crossentropy",
        "stage1_patience": 0,
        "stage1_monitor": "default",
        "stage2_name": "top",
        "stage2_epochs": 2,
        "stage2_learning_rate": pytest.approx(5e-3),
        "stage2_trainable_blocks": "1",
        "stage2_schedule": "constant",
        "stage2_optimizer": "adam",
        "stage2_weight_decay": 0.0,
        "stage2_gradient_accumulation_steps": 1,
        "stage2_loss": "crossentropy",
        "stage2_patience": 0,
        "stage2_monitor": "default",
    }


def test_report(tiny_run):
    report_dir = os.path.join(tiny_run["run_dir"], "report")
    for name in ("training_curves.png", "confusion_matrix.png"):
        image = np.asarray(Image.open(os.path.join(report_dir, name)))
        assert image.shape[0] > 200 and image.shape[1] > 200, name
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10
    with open(os.path.join(report_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["split"] == "validation"
    assert metrics["num_examples"] == 16
    assert sorted(metrics["per_class"]) == ["cat", "dog"]
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == 16
    for i, name in enumerate(["cat", "dog"]):
        row = metrics["per_class"][name]
        assert row["support"] == matrix[i].sum()
        assert row["recall"] == pytest.approx(matrix[i, i] / matrix[i].sum())
        if matrix[:, i].sum():
            assert row["precision"] == pytest.approx(matrix[i, i] / matrix[:, i].sum())
        assert set(row) == {"precision", "recall", "f1", "support"}
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / 16)
    final = tiny_run["histories"][-1].history["val_accuracy"][-1]
    assert metrics["final_epoch"]["val_accuracy"] == pytest.approx(final)


def _compiled_model():
    model = transfer.build_classifier("tiny_cnn", 3, weights=None, dropout=0.0)
    plan = transfer.set_trainable_blocks(model, 1)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model, plan


def test_public_callbacks_in_a_plain_fit(tmp_path):
    """A user's own fit: tf.data with augmentation, two fits, one axis."""
    x, y = transfer.synthetic_images(12, 32, 3, seed=1)
    train = transfer.make_dataset(
        x, y, image_size=32, batch_size=6, shuffle=True, seed=0,
        augment=transfer.data.images.default_augmentation(seed=0),
    )
    val = transfer.make_dataset(x, y, image_size=32, batch_size=6)
    model, plan = _compiled_model()
    log_dir = str(tmp_path / "logs")
    names = ["r", "g", "b"]

    def fit(initial_epoch, epochs):
        model.fit(
            train, validation_data=val, initial_epoch=initial_epoch,
            epochs=epochs, verbose=0,
            callbacks=[
                tcb.EpochTensorBoard(log_dir),
                tcb.StageLogger(log_dir, freeze_plan=plan),
                tcb.InputImagesLogger(train, log_dir, max_images=4),
                tcb.ConfusionMatrixLogger(val, names, log_dir),
                tcb.TopLossesLogger(val, names, log_dir, num_images=5),
                tcb.HParamsLogger({"learning_rate": 1e-3, "note": "x"}, log_dir),
            ],
        )

    fit(0, 2)
    fit(2, 3)
    logs = read_logs(log_dir)
    assert logs["train"]["epoch_loss"]["steps"] == [0, 1, 2]
    assert set(logs["validation"]) == {"epoch_loss", "epoch_accuracy"}
    assert logs["stage"]["trainable_params"]["steps"] == [0, 1, 2]
    assert logs["stage"]["freeze_plan"]["steps"] == [0, 2]
    images = logs["validation_images"]
    assert images["confusion_matrix"]["steps"] == [0, 1, 2]
    # 3 classes: 3.8 inches, the 4-inch minimum.
    assert png_shapes(images["confusion_matrix"]["values"])[0] == (400, 400, 3)
    assert images["top_losses"]["steps"] == [1, 2]
    # 5 tiles, 4 a row: 2 rows.
    assert png_shapes(images["top_losses"]["values"])[0] == (572, 1030, 3)
    inputs = logs["train_images"]["training_inputs"]
    assert inputs["steps"] == [0, 2]
    # 4 augmented images, 2 x 2 tiles of 64 px.
    assert png_shapes(inputs["values"]) == [(134, 134, 3)] * 2
    assert logs["."]["_hparams_/session_start_info"]["steps"] == [0, 0]


def test_image_titles_count_epochs_from_one(tmp_path, monkeypatch):
    """Titles drawn into images count epochs as Keras's progress bar does."""
    titles = []

    def recording(draw):
        def record(*args, **kwargs):
            titles.append(kwargs["title"])
            return draw(*args, **kwargs)

        return record

    for name in ("confusion_matrix_figure", "top_losses_figure"):
        monkeypatch.setattr(plots, name, recording(getattr(plots, name)))
    x, y = transfer.synthetic_images(6, 32, 3, seed=3)
    model, _ = _compiled_model()
    log_dir = str(tmp_path / "logs")
    callbacks = [
        tcb.ConfusionMatrixLogger((x, y), None, log_dir),
        tcb.TopLossesLogger((x, y), None, log_dir, num_images=2),
    ]
    model.fit(x, y, epochs=1, verbose=0, callbacks=callbacks)
    model.fit(x, y, initial_epoch=1, epochs=2, verbose=0, callbacks=callbacks)
    starts = ["Epoch 1:", "Top losses after epoch 1,",
              "Epoch 2:", "Top losses after epoch 2,"]
    assert len(titles) == len(starts)
    for title, start in zip(titles, starts, strict=True):
        assert title.startswith(start), (title, start)
    # TensorBoard steps stay Keras's 0-based epochs.
    images = read_logs(log_dir)["validation_images"]
    assert images["confusion_matrix"]["steps"] == [0, 1]
    assert images["top_losses"]["steps"] == [0, 1]


def test_confusion_matrix_counts_match_predictions(tmp_path):
    x, y = transfer.synthetic_images(9, 32, 3, seed=2)
    model, _ = _compiled_model()
    metrics = transfer.write_report(
        str(tmp_path / "report"), model=model, data=(x, y),
        class_names=["r", "g", "b"], split="test",
    )
    predicted = np.argmax(model.predict(x, verbose=0), -1)
    expected = np.zeros((3, 3), int)
    np.add.at(expected, (y, predicted), 1)
    assert metrics["confusion_matrix"] == expected.tolist()
    assert metrics["split"] == "test"
    assert not os.path.exists(tmp_path / "report" / "training_curves.png")


def test_iterate_batches_kinds_and_errors():
    from transfer._inputs import iterate_batches
    from transfer.reporting.report import first_images

    x, y = transfer.synthetic_images(5, 32, 2)

    class Seq(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[i * 3:(i + 1) * 3], y[i * 3:(i + 1) * 3]

    for data in ((x, y), Seq(), transfer.make_dataset(x, y, image_size=32, batch_size=3)):
        batches = list(iterate_batches(data, batch_size=3))
        assert [len(b[1]) for b in batches] == [3, 2]
        assert first_images(data, 2).shape == (2, 32, 32, 3)
    infinite = transfer.make_dataset(x, y, image_size=32, batch_size=3).repeat()
    with pytest.raises(ValueError, match="repeats forever"):
        list(iterate_batches(infinite))
    with pytest.raises(ValueError, match="Received: a batch of type"):
        list(iterate_batches(transfer.make_dataset(x, image_size=32)))


def test_callbacks_reject_bad_arguments_before_training(tmp_path, tiny_data):
    model, _ = _compiled_model()
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    with pytest.raises(ValueError, match=r"3 outputs but 2 class names.*Received"):
        model.fit(*tiny_data, epochs=1, verbose=0, callbacks=[
            tcb.ConfusionMatrixLogger(tiny_data, ["a", "b"], str(tmp_path))])
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="Cannot write TensorBoard logs.*Received: log_dir="):
        model.fit(*tiny_data, epochs=1, verbose=0,
                  callbacks=[tcb.StageLogger(str(blocker / "logs"))])
    with pytest.raises(ValueError, match="Cannot write TensorBoard logs"):
        transfer.default_callbacks(str(blocker / "logs"))
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Received: 'lr'=None"):
        tcb.HParamsLogger({"lr": None})
    with pytest.raises(ValueError, match="Received: num_images=0"):
        tcb.TopLossesLogger(tiny_data, num_images=0)
    with pytest.raises(ValueError, match="Received: profile_batch='x'"):
        transfer.default_callbacks(str(tmp_path / "logs"), profile_batch="x")


def test_unfinished_run_logs_are_never_mixed(tiny_model, tiny_data, tmp_path):
    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("killed mid-run")

    def crashed_run(run_dir):
        with pytest.raises(RuntimeError, match="killed mid-run"):
            transfer.fit_recipe(tiny_model, recipe, tiny_data, run_dir=run_dir,
                                callbacks=[Crash()], verbose=0)
        assert not os.path.exists(os.path.join(run_dir, "manifest.json"))
        event_files = transfer.tensorboard.summaries.find_event_files(os.path.join(run_dir, "logs"))
        assert event_files
        return event_files

    recipe = [transfer.Stage("h", 1, 1e-3)]
    # Another run's leftover logs, with no resume state: refused, untouched.
    foreign = str(tmp_path / "foreign")
    crashed_run(foreign)
    shutil.rmtree(os.path.join(foreign, "checkpoints"))
    leftovers = transfer.tensorboard.summaries.find_event_files(os.path.join(foreign, "logs"))
    with pytest.raises(ValueError, match=r"holds TensorBoard logs of an earlier run.*events\.out\.tfevents.*Received: run_dir="):
        transfer.fit_recipe(tiny_model, recipe, tiny_data, run_dir=foreign, verbose=0)
    assert transfer.tensorboard.summaries.find_event_files(os.path.join(foreign, "logs")) == leftovers

    # A resumable run whose logs were written by another run: refused too.
    run_dir = str(tmp_path / "run")
    event_files = crashed_run(run_dir)
    owner = os.path.join(run_dir, "logs", ".transfer-run")
    mine = open(owner).read()
    with open(owner, "w") as f:
        f.write("another-run")
    with pytest.raises(ValueError, match=r"were not written by that run.*Received: run_dir="):
        transfer.fit_recipe(tiny_model, recipe, tiny_data, run_dir=run_dir, verbose=0)
    assert transfer.tensorboard.summaries.find_event_files(os.path.join(run_dir, "logs")) == event_files

    # Its own logs: the rerun resumes and continues them.
    with open(owner, "w") as f:
        f.write(mine)
    transfer.fit_recipe(tiny_model, recipe, tiny_data, run_dir=run_dir, verbose=0)
    assert os.path.exists(os.path.join(run_dir, "manifest.json"))
    after = transfer.tensorboard.summaries.find_event_files(os.path.join(run_dir, "logs"))
    assert set(event_files) <= set(after)


def test_log_dir_that_is_not_writable(tiny_model, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "logs").write_text("a file where the log directory goes")
    with pytest.raises(ValueError, match="Cannot write TensorBoard logs to .*logs"):
        transfer.fit_recipe(tiny_model, [transfer.Stage("h", 1, 1e-3)], tiny_data,
                            run_dir=str(run_dir), verbose=0)
    assert not os.path.exists(run_dir / "checkpoints")


@pytest.mark.requires_backend("tensorflow")
def test_profiler_on_tensorflow(tiny_model, tiny_data, tmp_path):
    run_dir = str(tmp_path / "run")
    transfer.fit_recipe(tiny_model, [transfer.Stage("h", 1, 1e-3)], tiny_data,
                        run_dir=run_dir, batch_size=8, profile_batch=1, verbose=0)
    profile = os.path.join(run_dir, "logs", "train", "plugins", "profile")
    traces = [f for _, _, files in os.walk(profile) for f in files]
    assert any(f.endswith(".xplane.pb") for f in traces), traces


@pytest.mark.requires_backend("jax", "torch")
def test_profiler_elsewhere_logs_one_line(tiny_model, tiny_data, tmp_path, caplog):
    run_dir = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="transfer"):
        transfer.fit_recipe(tiny_model, [transfer.Stage("h", 1, 1e-3)], tiny_data,
                            run_dir=run_dir, batch_size=8, profile_batch=1, verbose=0)
    lines = [r.getMessage() for r in caplog.records if "Profiling" in r.getMessage()]
    assert lines == [
        "Profiling is only supported on the TensorFlow backend; running "
        f"without it on {keras.config.backend()} (profile_batch=1 ignored)."
    ]
    assert not os.path.exists(os.path.join(run_dir, "logs", "train", "plugins"))
    assert os.path.exists(os.path.join(run_dir, "manifest.json"))


def test_missing_matplotlib_gives_the_pip_command(monkeypatch, tiny_data):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        tcb.ConfusionMatrixLogger(tiny_data)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        transfer.write_report("unused")
