"""Stage options: schedules, layer decay, label smoothing, augmentation, class weights, EMA.

Covers: transfer.training.stage_options, transfer.training.recipe.
"""

import os
import re

import keras
import numpy as np
import pytest

import transfer
from transfer.training import stage_options
from transfer.training.checkpoints import read_checkpoint
from transfer.training.checkpoints import write_checkpoint


def _gradual_recipe():
    return transfer.Recipe((
        transfer.Stage("head", 1, 1e-3, 0, label_smoothing=0.1),
        transfer.Stage("top1", 1, 3e-4, 1, schedule="cosine", warmup_epochs=0,
                       augment=["mixup"], class_weight="auto"),
        transfer.Stage("top2", 2, 3e-4, 2, schedule="cosine", warmup_epochs=1,
                       layer_decay=0.5, augment=("cutmix", "randaugment")),
        transfer.Stage("all", 1, 1e-4, "all", layer_decay=0.8, ema=True),
    ))


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_multi_stage_recipe_round_trips(tmp_path, suffix):
    recipe = _gradual_recipe()
    assert recipe.stages[2].augment == ("cutmix", "randaugment")
    assert transfer.Recipe.from_config(recipe.get_config()) == recipe
    path = str(tmp_path / f"recipe{suffix}")
    transfer.save_recipe(recipe, path)
    assert transfer.load_recipe(path) == recipe
    # Files written before these options existed still load, with defaults.
    old = transfer.Stage.from_config(
        {"name": "x", "epochs": 1, "learning_rate": 1e-3}
    )
    assert old.layer_decay == 1.0 and old.augment == () and not old.ema


@pytest.mark.parametrize("key,value,allowed", [
    ("layer_decay", 0.0, r"\(0, 1\]"),
    ("layer_decay", 1.5, r"\(0, 1\]"),
    ("label_smoothing", 1.0, r"\[0, 1\)"),
    ("class_weight", "balanced", r"\(None, 'auto'\)"),
    ("augment", ["mixup", "cutout"], "'mixup', 'cutmix', 'randaugment'"),
    ("augment", ["mixup", "mixup"], "distinct"),
    ("warmup_epochs", 1, "unless schedule='cosine'"),
    ("ema", "yes", "True or False"),
])
def test_bad_option_values_name_key_and_allowed(tmp_path, key, value, allowed):
    config = {"name": "s", "epochs": 2, "learning_rate": 1e-3, key: value}
    with pytest.raises(ValueError, match=f"`{key}` must be .*{allowed}"):
        transfer.Stage.from_config(config)
    path = tmp_path / "recipe.yaml"
    transfer.save_recipe([transfer.Stage("s", 1, 1e-3)], str(path))
    # The saved recipe names every field once: replace the key's own line
    # (a second line with the key would be refused as a duplicate).
    text, count = re.subn(rf"(?m)^(\s*){key}:.*$",
                          lambda m: f"{m.group(1)}{key}: {value!r}",
                          path.read_text())
    assert count == 1
    path.write_text(text)
    with pytest.raises(ValueError, match=f"recipe.yaml.*Received: {key}="):
        transfer.load_recipe(str(path))


def test_too_many_blocks_fails_before_training(tiny_model, tiny_data, tmp_path):
    recipe = [transfer.Stage("head", 1, 1e-3), transfer.Stage("deep", 1, 1e-4, 4)]
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="Stage 'deep': The backbone has 3 "
                       r"blocks.*Received: trainable_blocks=4"):
        transfer.fit_recipe(tiny_model, recipe, tiny_data, run_dir=str(run_dir))
    assert not run_dir.exists()  # nothing trained, nothing written


def _relative_change(before, model, name):
    after = keras.ops.convert_to_numpy(model.get_layer("tiny_cnn")
                                       .get_layer(name).kernel)
    return np.linalg.norm(after - before[name]) / np.linalg.norm(before[name])


@pytest.mark.parametrize("decay", [0.1, 1.0])
def test_layer_decay_slows_lower_blocks(tiny_model, tiny_data, decay):
    transfer.set_trainable_blocks(tiny_model, "all")
    stage = transfer.Stage("all", 1, 1e-2, "all", layer_decay=decay)
    optimizer = stage_options.build_optimizer(tiny_model, stage, 1)
    tiny_model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    backbone = tiny_model.get_layer("tiny_cnn")
    names = ("stem_conv", "block1_conv", "block2_conv")
    # Copies: on JAX (CPU) a NumPy view may share the donated buffer.
    before = {n: np.array(backbone.get_layer(n).kernel, copy=True)
              for n in names}
    x, y = tiny_data
    tiny_model.train_on_batch(x, y)
    stem, block1, block2 = (_relative_change(before, tiny_model, n)
                            for n in names)
    if decay < 1:
        assert isinstance(optimizer, keras.optimizers.MultiOptimizer)
        assert len(optimizer.optimizers) == 4  # head + 3 blocks
        # Adam's first step moves each weight by about its learning rate:
        # a factor 10 per block down.
        assert stem < block1 < block2
        assert block1 < block2 / 3 and stem < block1 / 3
    else:
        assert isinstance(optimizer, keras.optimizers.Adam)
        assert block2 < 3 * stem  # same rate: no ordering by 10x


# JAX compiles this stage for minutes on CPU; it gets the lighter test below.
@pytest.mark.requires_backend("tensorflow", "torch")
def test_all_options_train_save_and_resume(tiny_model, tiny_data, tmp_path):
    x, y = tiny_data
    stage = transfer.Stage(
        "all", 2, 1e-3, "all", schedule="cosine", warmup_epochs=1,
        layer_decay=0.7, label_smoothing=0.1, class_weight="auto",
        augment=["mixup", "cutmix", "randaugment"], ema=True,
    )
    run_dir = str(tmp_path / "run")
    histories = transfer.fit_recipe(tiny_model, [stage], (x, y), (x, y),
                                    run_dir=run_dir, batch_size=8, verbose=0)
    assert histories[0].epoch == [0, 1]
    assert np.isfinite(histories[0].history["val_accuracy"]).all()
    # Trained on one-hot labels, left compiled for integer labels.
    loss, accuracy = tiny_model.evaluate(x, y, verbose=0)
    assert np.isfinite(loss) and 0 <= accuracy <= 1
    reloaded = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    assert isinstance(reloaded.optimizer, keras.optimizers.MultiOptimizer)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0),
                               tiny_model.predict(x, verbose=0), atol=1e-5)
    # A resume checkpoint restores the MultiOptimizer's state (every Adam
    # moment and EMA) into a freshly compiled model.
    path = str(tmp_path / "backup.npz")
    write_checkpoint(path, tiny_model, optimizer=True)
    fresh = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    transfer.set_trainable_blocks(fresh, "all")
    fresh.compile(stage_options.build_optimizer(fresh, stage, 2), "mse")
    read_checkpoint(path, fresh, optimizer=True)
    for a, b in zip(tiny_model.optimizer.variables, fresh.optimizer.variables,
                    strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a),
                                   keras.ops.convert_to_numpy(b))


@pytest.mark.parametrize("augment", [(), ("mixup",)])
def test_layer_decay_and_ema_fit_and_reload(tiny_model, tiny_data, tmp_path,
                                            augment):
    # On JAX, EMA weights once shared a buffer that predict() deleted.
    x, y = tiny_data
    stage = transfer.Stage("all", 1, 1e-3, "all", layer_decay=0.7, ema=True,
                           augment=augment)
    run_dir = str(tmp_path / "run")
    transfer.fit_recipe(tiny_model, [stage], (x, y), (x, y), run_dir=run_dir,
                        batch_size=8, verbose=0)
    reloaded = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0),
                               tiny_model.predict(x, verbose=0), atol=1e-5)
    assert np.isfinite(tiny_model.evaluate(x, y, verbose=0)).all()


def test_balanced_class_weight():
    weights = stage_options.balanced_class_weight([0, 0, 0, 1], 3)
    assert weights == {0: 4 / 9, 1: 4 / 3, 2: 1.0}


def test_augment_needs_mappable_data(tiny_model, tiny_data, tmp_path):
    x, y = tiny_data

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]

    stage = transfer.Stage("s", 1, 1e-3, augment=["mixup"])
    with pytest.raises(ValueError, match="tf.data.Dataset or an \\(x, y\\)"):
        transfer.fit_recipe(tiny_model, [stage], Batches(),
                            run_dir=str(tmp_path / "r"), verbose=0)


def test_warmup_then_cosine_and_layer_scale():
    stage = transfer.Stage("s", 3, 1e-3, schedule="cosine", warmup_epochs=1)
    schedule = stage.learning_rate_for(10)
    rate = [float(keras.ops.convert_to_numpy(schedule(s))) for s in (0, 5, 10, 30)]
    assert rate[0] == 0 and rate[1] == pytest.approx(5e-4)
    assert rate[2] == pytest.approx(1e-3) and rate[3] == pytest.approx(0, abs=1e-9)
    scaled = stage.learning_rate_for(10, scale=0.5)
    assert float(keras.ops.convert_to_numpy(scaled(10))) == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="smaller than epochs"):
        transfer.Stage("s", 1, 1e-3, schedule="cosine", warmup_epochs=1)
