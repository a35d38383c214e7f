"""The training options practitioners reach for: optimizers, weight decay,
clipping, accumulation, the focal loss, early stopping, a chosen monitor,
precision and jit_compile.

Covers: transfer.training.recipe (Stage and Recipe fields),
transfer.training.stage_options, transfer.training.early_stopping,
transfer.models.classifier (precision), transfer._backend (auto choices).
"""

import json
import os

import keras
import numpy as np
import pytest

import transfer
from transfer import _backend
from transfer.training import stage_options

BACKEND = keras.config.backend()


def _data(n=32, seed=0):
    return transfer.synthetic_images(n, 32, 2, seed=seed)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"clipnorm": 0}, "clipnorm"),
        ({"global_clipnorm": -1.0}, "global_clipnorm"),
        ({"clipnorm": 1.0, "global_clipnorm": 1.0}, "global_clipnorm"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"gradient_accumulation_steps": 1.5}, "gradient_accumulation_steps"),
        ({"loss": "hinge"}, "loss"),
        ({"patience": 0}, "patience"),
        ({"min_delta": -1}, "min_delta"),
        ({"monitor": ""}, "monitor"),
    ],
)
def test_bad_stage_options_are_refused_with_key_and_value(kwargs, key):
    with pytest.raises(ValueError, match=f"`{key}` must be .*Received: {key}="):
        transfer.Stage("s", 2, 1e-3, **kwargs)


def test_new_options_round_trip_through_config_and_recipe_files(tmp_path):
    stage = transfer.Stage(
        "s", 3, 1e-3, optimizer="sgd", weight_decay=1e-4, clipnorm=1.0,
        gradient_accumulation_steps=2, loss="focal", patience=2,
        min_delta=0.01, monitor="val_loss",
    )
    recipe = transfer.Recipe((stage,), jit_compile=False)
    assert transfer.Recipe.from_config(
        json.loads(json.dumps(recipe.get_config()))) == recipe
    path = str(tmp_path / "recipe.yaml")
    transfer.save_recipe(recipe, path)
    assert transfer.load_recipe(path) == recipe
    with pytest.raises(ValueError, match="jit_compile"):
        transfer.Recipe((stage,), jit_compile="yes")


def test_optimizers_and_weight_decay_skip_biases_and_norms():
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    transfer.set_trainable_blocks(model, "all")
    for name, cls in (("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD"),
                      ("lion", "Lion")):
        stage = transfer.Stage("s", 1, 1e-3, trainable_blocks="all",
                               optimizer=name, weight_decay=0.05,
                               global_clipnorm=1.0)
        optimizer = stage_options.build_optimizer(model, stage, 4)
        assert type(optimizer).__name__ == cls
        assert optimizer.weight_decay == 0.05
        assert optimizer.global_clipnorm == 1.0
        decayed = {v.path: optimizer._use_weight_decay(v)
                   for v in model.trainable_variables}
        assert any(decayed.values())
        for variable in model.trainable_variables:
            assert decayed[variable.path] == (len(variable.shape) > 1)
    sgd = stage_options.build_optimizer(
        model, transfer.Stage("s", 1, 1e-3, optimizer="sgd"), 4)
    assert sgd.momentum == 0.9 and sgd.nesterov


@pytest.mark.requires_backend("tensorflow", "torch")  # JAX: kept tiny
def test_weight_decay_also_inside_the_layer_decay_optimizers():
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    transfer.set_trainable_blocks(model, "all")
    stage = transfer.Stage("s", 1, 1e-3, trainable_blocks="all",
                           layer_decay=0.5, optimizer="adamw",
                           weight_decay=0.1)
    optimizer = stage_options.build_optimizer(model, stage, 4)
    assert type(optimizer).__name__ == "MultiOptimizer"
    x, y = _data(8)
    stage_options.compile_model(model, optimizer, stage)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    bias = next(v for v in model.trainable_variables if len(v.shape) == 1)
    kernel = next(v for v in model.trainable_variables if len(v.shape) > 1)
    subs = list(optimizer.optimizer_map.values()) if hasattr(
        optimizer, "optimizer_map") else []
    for sub in subs:
        assert sub.weight_decay == 0.1
        assert not sub._use_weight_decay(bias)
        assert sub._use_weight_decay(kernel)


def test_gradient_accumulation_counts_optimizer_steps_and_keeps_schedule(
        tmp_path):
    x, y = _data(32)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    stage = transfer.Stage("s", 2, 1e-2, schedule="cosine",
                           gradient_accumulation_steps=2, ema=True)
    transfer.fit_recipe(model, [stage], (x, y), batch_size=8,
                        run_dir=str(tmp_path / "run"), verbose=0)
    optimizer = model.optimizer
    # 4 batches per epoch, 2 epochs, 2 batches per optimizer step.
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 4
    # The cosine schedule counts batches: it reached its end.
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) < 1e-6
    assert optimizer.ema_momentum == pytest.approx(0.99 ** 0.5)


@pytest.mark.requires_backend("tensorflow", "torch")  # JAX: kept tiny
def test_focal_loss_with_class_weight_and_label_smoothing(tmp_path):
    x, y = _data(32)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    stage = transfer.Stage("s", 1, 1e-3, loss="focal", class_weight="auto",
                           label_smoothing=0.1)
    histories = transfer.fit_recipe(
        model, [stage], (x, y), (x[:8], y[:8]), batch_size=8,
        run_dir=str(tmp_path / "run"), verbose=0)
    assert np.isfinite(histories[0].history["loss"][0])
    compiled = stage_options.loss_and_metrics(model, stage, True)["loss"]
    assert type(compiled).__name__ == "CategoricalFocalCrossentropy"
    regressor = transfer.build_regressor("tiny_cnn", weights=None)
    with pytest.raises(ValueError, match="loss='focal' is for classifiers"):
        stage_options.loss_and_metrics(regressor, stage, True)


class _Weights(keras.callbacks.Callback):
    """Records the weights at every epoch end and at each fit's start."""

    def __init__(self):
        super().__init__()
        self.at_epoch_end = {}
        self.at_train_begin = []

    def on_train_begin(self, logs=None):
        self.at_train_begin.append(
            [np.array(w, copy=True) for w in self.model.get_weights()])

    def on_epoch_end(self, epoch, logs=None):
        self.at_epoch_end[epoch] = [
            np.array(w, copy=True) for w in self.model.get_weights()]


def _early_recipe():
    # min_delta=100: nothing after the first epoch counts as better, so a
    # patience of 1 stops after the second epoch and keeps the first.
    return [
        transfer.Stage("head", 5, 1e-2, patience=1, min_delta=100.0,
                       monitor="val_loss"),
        transfer.Stage("tail", 2, 1e-3),
    ]


def test_early_stopping_ends_the_stage_on_its_best_epoch(tmp_path):
    x, y = _data(32)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    recorder = _Weights()
    run_dir = str(tmp_path / "run")
    histories = transfer.fit_recipe(
        model, _early_recipe(), (x, y), (x[:8], y[:8]), batch_size=8,
        run_dir=run_dir, callbacks=[recorder], verbose=0,
        cache_features=False)
    assert histories[0].epoch == [0, 1]
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    record = manifest["stages"][0]["early_stopping"]
    assert record["stopped_after_epoch"] == 1
    assert record["best_epoch"] == 0
    assert manifest["stages"][0]["monitor"] == "val_loss"
    assert manifest["stages"][1]["early_stopping"] is None
    # Stage 2 started from epoch 0's weights, not epoch 1's.
    start = recorder.at_train_begin[1]
    for got, best in zip(start, recorder.at_epoch_end[0], strict=True):
        np.testing.assert_allclose(got, best, atol=1e-6)
    assert any(not np.allclose(b, w) for b, w in zip(
        recorder.at_epoch_end[0], recorder.at_epoch_end[1], strict=True))
    # TensorBoard's stage text says so.
    events = transfer.tensorboard.summaries.find_event_files(
        os.path.join(run_dir, "logs", "stage"))
    assert events


class _StopIn(keras.callbacks.Callback):
    """Fails at the end of the first epoch of the `n`-th fit it sees."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.fits = 0

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.fits == self.n:
            raise RuntimeError("killed")


@pytest.mark.requires_backend("tensorflow", "torch")  # JAX: kept tiny
def test_resume_after_an_early_stop_starts_the_next_stage_from_the_best(
        tmp_path):
    x, y = _data(32)
    run_dir = str(tmp_path / "run")
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    recorder = _Weights()
    with pytest.raises(RuntimeError, match="killed"):
        transfer.fit_recipe(
            model, _early_recipe(), (x, y), (x[:8], y[:8]), batch_size=8,
            run_dir=run_dir, callbacks=[recorder, _StopIn(2)], verbose=0,
            cache_features=False)
    best = recorder.at_epoch_end[0]
    fresh = transfer.build_classifier("tiny_cnn", 2, weights=None)
    again = _Weights()
    histories = transfer.fit_recipe(
        fresh, _early_recipe(), (x, y), (x[:8], y[:8]), batch_size=8,
        run_dir=run_dir, callbacks=[again], verbose=0, cache_features=False)
    assert histories[0].epoch == [0, 1]  # not trained again
    assert len(again.at_train_begin) == 1  # only the second stage ran
    assert histories[1].epoch == [5, 6]
    # The first stage's final backup, which a resumed run starts the next
    # stage from, holds the best epoch's weights.
    final = os.path.join(run_dir, "checkpoints", "head", "final.npz")
    assert os.path.exists(final)
    probe = transfer.build_classifier("tiny_cnn", 2, weights=None)
    transfer.training.checkpoints.read_checkpoint(final, probe,
                                                  optimizer=False)
    for got, want in zip(probe.get_weights(), best, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.requires_backend("tensorflow", "torch")  # JAX: kept tiny
def test_monitor_macro_f1_and_unknown_monitors(tmp_path):
    x, y = _data(32)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    stage = transfer.Stage("s", 1, 1e-3, monitor="val_macro_f1", patience=2)
    histories = transfer.fit_recipe(
        model, [stage], (x, y), (x[:8], y[:8]), batch_size=8,
        run_dir=str(tmp_path / "ok"), verbose=0)
    assert "val_macro_f1" in histories[0].history
    bad = transfer.Stage("s", 1, 1e-3, monitor="val_auc")
    run_dir = tmp_path / "refused"
    with pytest.raises(ValueError, match="`monitor` must be a metric this "
                       r"model logs: \['loss', 'accuracy', 'val_loss'"):
        transfer.fit_recipe(model, [bad], (x, y), (x[:8], y[:8]),
                            run_dir=str(run_dir), verbose=0)
    assert not run_dir.exists()
    with pytest.raises(ValueError, match="metrics need validation data"):
        transfer.fit_recipe(
            model, [transfer.Stage("s", 1, 1e-3, monitor="val_loss")],
            (x, y), run_dir=str(run_dir), verbose=0)
    regressor = transfer.build_regressor("tiny_cnn", weights=None)
    monitor = stage_options.monitor_for(
        regressor, (x, y), transfer.Stage("s", 1, 1e-3, monitor="val_rmse"))
    assert monitor == ("val_rmse", "min")


@pytest.mark.parametrize("precision", [
    "mixed_bfloat16",
    pytest.param("mixed_float16", marks=pytest.mark.requires_backend(
        "tensorflow", "torch")),
])
def test_precision_policies_build_and_train(precision, tmp_path):
    x, y = _data(16)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None,
                                      precision=precision)
    assert model.dtype_policy.name == precision
    assert model.transfer_metadata["precision"] == precision
    assert model.output.dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # restored
    transfer.fit_recipe(model, [transfer.Stage("s", 1, 1e-3,
                                               trainable_blocks="all")],
                        (x, y), batch_size=8, run_dir=str(tmp_path / "r"),
                        verbose=0)
    for layer in model.get_layer("tiny_cnn").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.moving_mean.dtype == "float32"
    wrapped = type(model.optimizer).__name__ == "LossScaleOptimizer"
    assert wrapped == (precision == "mixed_float16")
    assert all(np.isfinite(w).all() for w in model.get_weights())
    reloaded = transfer.load_model(str(tmp_path / "r" / "model.keras"))
    np.testing.assert_allclose(
        reloaded.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0),
        atol=1e-2)


@pytest.mark.requires_backend("tensorflow", "torch")  # JAX: kept tiny
def test_efficientnet_builds_under_mixed_float16():
    """The tensorflow#50171 case: an EfficientNet under mixed_float16."""
    model = transfer.build_classifier(
        "efficientnet_lite0", 2, weights=None, image_size=64,
        precision="mixed_float16")
    out = model.predict(np.zeros((1, 64, 64, 3), "float32"), verbose=0)
    assert out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.requires_backend("tensorflow", "torch")  # JAX: kept tiny
def test_precision_auto_and_bad_values():
    model = transfer.build_classifier("tiny_cnn", 2, weights=None,
                                      precision="auto")
    assert model.dtype_policy.name == _backend.auto_precision()
    if _backend.accelerator() == "cpu":
        assert _backend.auto_precision() == "float32"
    with pytest.raises(ValueError, match="Received: precision='fp8'"):
        transfer.build_classifier("tiny_cnn", 2, weights=None,
                                  precision="fp8")


def test_jit_compile_auto_is_resolved_and_recorded(tmp_path):
    x, y = _data(16)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    run_dir = tmp_path / "run"
    transfer.fit_recipe(model, [transfer.Stage("s", 1, 1e-3)], (x, y),
                        batch_size=8, run_dir=str(run_dir), verbose=0)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    expected = _backend.auto_jit_compile()
    assert manifest["jit_compile"] == expected
    # JAX's persistent compilation cache: recorded where it is on.
    assert manifest["compilation_cache"] == _backend.compilation_cache()
    assert (manifest["compilation_cache"] is None) == (
        BACKEND != "jax"
        or os.environ.get("TRANSFER_COMPILATION_CACHE") == "0")
    # Keras's torch convolutions on channels-last views (transfer._torch_layout).
    if BACKEND == "torch":
        assert manifest["torch_layout"]["channels_last_views"] is (
            os.environ.get("TRANSFER_TORCH_CHANNELS_LAST_VIEWS") != "0")
        assert manifest["torch_layout"]["affine_batch_norm"] is (
            os.environ.get("TRANSFER_TORCH_AFFINE_BATCHNORM") != "0")
    else:
        assert manifest["torch_layout"] is None
    # And intermediate tensors released early on torch (_torch_graph).
    if BACKEND == "torch":
        assert manifest["torch_graph"]["early_release"] is (
            os.environ.get("TRANSFER_TORCH_EARLY_RELEASE") != "0")
        assert manifest["torch_graph"]["direct_calls"] is (
            os.environ.get("TRANSFER_TORCH_DIRECT_CALLS") != "0")
    else:
        assert manifest["torch_graph"] is None
    # And JAX's depthwise convolutions as shifted sums (_jax_convolutions).
    if BACKEND == "jax":
        assert manifest["jax_convolutions"]["shifted_sum_depthwise"] is (
            os.environ.get("TRANSFER_JAX_FAST_CONVOLUTIONS") != "0")
    else:
        assert manifest["jax_convolutions"] is None
    # And lazy initial values on JAX (_jax_init).
    if BACKEND == "jax":
        assert manifest["jax_lazy_init"]["lazy_init"] is (
            os.environ.get("TRANSFER_JAX_LAZY_INIT") != "0")
    else:
        assert manifest["jax_lazy_init"] is None
    # And Adam as one fused op per variable on TensorFlow (_tf_adam).
    if BACKEND == "tensorflow":
        assert manifest["tf_fused_adam"]["fused_adam"] is (
            os.environ.get("TRANSFER_TF_FUSED_ADAM") != "0")
    else:
        assert manifest["tf_fused_adam"] is None
    # And no Grappler pass on a CPU with TensorFlow (_tf_graph).
    if BACKEND == "tensorflow":
        assert manifest["tf_graph"]["grappler"] is (
            os.environ.get("TRANSFER_TF_SKIP_GRAPPLER") == "0"
            or _backend.accelerator() != "cpu")
    else:
        assert manifest["tf_graph"] is None
    if _backend.accelerator() == "cpu":
        assert expected == (BACKEND == "jax")
