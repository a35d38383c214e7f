"""`Stage`, `Recipe`, recipe files and `fit_recipe` end to end.

Covers: transfer.training.recipe, recipe_files, fit, stages.
"""

import json
import os

import keras
import numpy as np
import pytest

import transfer


def _bn_stats(model):
    backbone = model.get_layer("tiny_cnn")
    return {
        layer.name: [keras.ops.convert_to_numpy(layer.moving_mean), keras.ops.convert_to_numpy(layer.moving_variance)]
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }


def _weights(model):
    backbone = model.get_layer("tiny_cnn")
    return {f"{layer.name}/{i}": keras.ops.convert_to_numpy(w)
            for layer in backbone.layers for i, w in enumerate(layer.weights)}


def test_stage_validation_and_round_trip():
    stage = transfer.Stage("finetune", 2, 1e-4, trainable_blocks=2)
    assert transfer.Stage.from_config(stage.get_config()) == stage
    recipe = transfer.two_stage_recipe()
    assert transfer.Recipe.from_config(json.loads(json.dumps(recipe.get_config()))) == recipe
    with pytest.raises(ValueError, match="Received: epochs=0"):
        transfer.Stage("x", 0, 1e-3)
    with pytest.raises(ValueError, match="Received: learning_rate=-1"):
        transfer.Stage("x", 1, -1)
    with pytest.raises(ValueError, match="Received: trainable_blocks='top'"):
        transfer.Stage("x", 1, 1e-3, trainable_blocks="top")
    with pytest.raises(ValueError, match="Unknown Stage option"):
        transfer.Stage.from_config({"name": "x", "epochs": 1, "learning_rate": 1, "lr": 2})
    with pytest.raises(ValueError, match="unique"):
        transfer.Recipe((stage, stage))


def test_two_stage_default():
    recipe = transfer.two_stage_recipe()
    head, finetune = recipe.stages
    assert head.trainable_blocks == 0 and head.learning_rate == 1e-3
    assert finetune.trainable_blocks == "all"
    assert finetune.learning_rate < head.learning_rate
    assert finetune.schedule == "cosine" and head.schedule == "constant"


def test_fit_recipe_end_to_end(tiny_model, tiny_data, tmp_path):
    recipe = [transfer.Stage("head", 1, 1e-2, 0), transfer.Stage("top", 2, 1e-2, 1)]
    epochs_seen = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs_seen.append(epoch)

    before = _weights(tiny_model)
    stats_before = _bn_stats(tiny_model)
    run_dir = str(tmp_path / "run")
    histories = transfer.fit_recipe(
        tiny_model, recipe, tiny_data, validation_data=tiny_data, run_dir=run_dir,
        batch_size=8, callbacks=[Recorder()], class_names=["a", "b"], verbose=0,
    )
    assert [h.epoch for h in histories] == [[0], [1, 2]]
    assert epochs_seen == [0, 1, 2]

    # BatchNorm statistics are bit-identical; only block2 (unfrozen) moved.
    for name, (mean, var) in _bn_stats(tiny_model).items():
        np.testing.assert_array_equal(mean, stats_before[name][0])
        np.testing.assert_array_equal(var, stats_before[name][1])
    after = _weights(tiny_model)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {"block2_conv/0"}

    for path in ("model.keras", "manifest.json", "recipe.json", "checkpoints/best.weights.h5"):
        assert os.path.exists(os.path.join(run_dir, path)), path
    assert os.listdir(os.path.join(run_dir, "logs"))
    manifest = json.load(open(os.path.join(run_dir, "manifest.json")))
    assert manifest["backend"] == keras.config.backend()
    assert manifest["backbone"] == "tiny_cnn"
    assert manifest["class_names"] == ["a", "b"]
    assert [s["name"] for s in manifest["stages"]] == ["head", "top"]
    assert manifest["stages"][0]["trainable_params"] == 34
    assert "val_accuracy" in manifest["stages"][1]["metrics"]
    assert "keras" in manifest["versions"]

    reloaded = transfer.load_model(os.path.join(run_dir, "model.keras"))
    np.testing.assert_allclose(
        reloaded.predict(tiny_data[0], verbose=0),
        tiny_model.predict(tiny_data[0], verbose=0), atol=1e-5,
    )


def test_fit_recipe_accepts_tf_data_and_pydataset(tiny_model, tiny_data, tmp_path):
    x, y = tiny_data
    ds = transfer.make_dataset(x, y, image_size=32, batch_size=8, shuffle=True, seed=0)

    class Seq(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]

    recipe = [transfer.Stage("head", 1, 1e-3)]
    transfer.fit_recipe(tiny_model, recipe, ds, run_dir=str(tmp_path / "a"), verbose=0)
    transfer.fit_recipe(tiny_model, recipe, Seq(), validation_data=Seq(),
                        run_dir=str(tmp_path / "b"), verbose=0)
    assert os.path.exists(tmp_path / "b" / "model.keras")


def test_learning_happens(tiny_data, tmp_path):
    x, y = transfer.synthetic_images(64, 32, 2, seed=1)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    recipe = [transfer.Stage("all", 8, 1e-2, "all")]
    transfer.fit_recipe(model, recipe, (x, y), run_dir=str(tmp_path / "r"),
                        batch_size=16, verbose=0)
    accuracy = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
    assert accuracy > 0.9


def test_bad_inputs_fail_before_training(tiny_model, tiny_data, tmp_path):
    x, y = tiny_data
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        transfer.fit_recipe(tiny_model, [transfer.Stage("h", 1, 1e-3)], (x, y + 1),
                            run_dir=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="differ in length"):
        transfer.fit_recipe(tiny_model, [transfer.Stage("h", 1, 1e-3)], (x, y[:3]),
                            run_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="2 outputs but 3 class names"):
        transfer.fit_recipe(tiny_model, [transfer.Stage("h", 1, 1e-3)], (x, y),
                            run_dir=str(tmp_path / "c"), class_names=["a", "b", "c"])
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="Cannot write to run directory"):
        transfer.fit_recipe(tiny_model, [transfer.Stage("h", 1, 1e-3)], (x, y),
                            run_dir=str(blocker / "run"))
    with pytest.raises(ValueError, match="The backbone has 3 blocks"):
        transfer.fit_recipe(tiny_model, [transfer.Stage("h", 1, 1e-3, 7)], (x, y),
                            run_dir=str(tmp_path / "d"), verbose=0)


def test_finished_run_dir_is_not_reused(tiny_model, tiny_data, tmp_path):
    run_dir = str(tmp_path / "run")
    recipe = [transfer.Stage("h", 1, 1e-3)]
    transfer.fit_recipe(tiny_model, recipe, tiny_data, run_dir=run_dir, verbose=0)
    with pytest.raises(ValueError, match="already holds a finished run"):
        transfer.fit_recipe(tiny_model, recipe, tiny_data, run_dir=run_dir, verbose=0)


def test_plain_model_fit_works_on_built_model(tiny_model, tiny_data):
    tiny_model.compile(optimizer="adam",
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])
    history = tiny_model.fit(*tiny_data, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_cosine_schedule_decays_to_zero(tiny_model, tiny_data, tmp_path):
    stage = transfer.Stage("cos", 2, 1e-2, "all", schedule="cosine")
    assert transfer.Stage.from_config(stage.get_config()) == stage
    with pytest.raises(ValueError, match="Received: schedule='linear'"):
        transfer.Stage("x", 1, 1e-3, schedule="linear")
    transfer.fit_recipe(tiny_model, [stage], tiny_data, run_dir=str(tmp_path / "r"),
                        batch_size=8, verbose=0)
    final = float(keras.ops.convert_to_numpy(tiny_model.optimizer.learning_rate))
    assert final < 1e-6


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_recipe_file_round_trip_and_errors(tmp_path, suffix):
    recipe = transfer.two_stage_recipe(head_epochs=2, finetune_blocks=3)
    path = str(tmp_path / f"recipe{suffix}")
    transfer.save_recipe(recipe, path)
    assert transfer.load_recipe(path) == recipe

    bad = tmp_path / f"bad{suffix}"
    bad.write_text(json.dumps({"stages": [{"name": "x", "epochs": 1, "learning_rate": 1e-3, "lr": 2}]}))
    with pytest.raises(ValueError, match=r"bad.*Unknown Stage option\(s\) \['lr'\].*Allowed"):
        transfer.load_recipe(str(bad))
    bad.write_text(json.dumps({"stages": [], "distribte": 1}))
    with pytest.raises(ValueError, match=r"Unknown Recipe option\(s\) \['distribte'\]"):
        transfer.load_recipe(str(bad))
    with pytest.raises(ValueError, match="not found"):
        transfer.load_recipe(str(tmp_path / f"missing{suffix}"))
    with pytest.raises(ValueError, match=r"\.json', '\.yaml', '\.yml'"):
        transfer.load_recipe(str(tmp_path / "recipe.txt"))
