"""Keras's Adam and AdamW on TensorFlow as TensorFlow's fused
`ResourceApplyAdam` (`transfer._tf_adam`): the same weights as Keras's own
update, fewer graph operations, on by default and off by environment."""

import keras
import numpy as np
import pytest

import transfer
from transfer import _tf_adam

pytestmark = pytest.mark.requires_backend("tensorflow")


@pytest.fixture
def restore():
    """Puts back what the suite runs with (whatever a test set)."""
    before = _tf_adam.state()["fused_adam"]
    yield
    _tf_adam.use_fused_adam(before)


def _train(fused, optimizer, monkeypatch, steps=4, seed=3):
    """Weights, losses and the variables given to `ResourceApplyAdam`
    while the step was traced."""
    import tensorflow as tf

    applied = []
    original = tf.raw_ops.ResourceApplyAdam

    def counting(**kwargs):
        applied.append(kwargs["var"])
        return original(**kwargs)

    monkeypatch.setattr(tf.raw_ops, "ResourceApplyAdam", counting)
    _tf_adam.use_fused_adam(fused)
    keras.utils.set_random_seed(seed)
    model = transfer.build_classifier("tiny_cnn", 3, weights=None,
                                      dropout=0.0)
    transfer.set_trainable_blocks(model, "all")
    model.compile(optimizer=optimizer(),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    x, y = transfer.synthetic_images(num_samples=8 * steps, image_size=32,
                                     num_classes=3, seed=1)
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False,
                        verbose=0)
    monkeypatch.undo()
    return model.get_weights(), history.history["loss"], applied, model


@pytest.mark.parametrize("optimizer", [
    lambda: keras.optimizers.Adam(1e-2),
    lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1),
    lambda: keras.optimizers.Adam(1e-2, global_clipnorm=0.5, use_ema=True),
    lambda: keras.optimizers.Adam(1e-2, gradient_accumulation_steps=2),
], ids=["adam", "adamw", "clipnorm_ema", "accumulation"])
def test_same_weights_as_keras_update(restore, optimizer, monkeypatch):
    keras_weights, keras_loss, keras_applied, _ = _train(
        False, optimizer, monkeypatch)
    fused_weights, fused_loss, fused_applied, model = _train(
        True, optimizer, monkeypatch)
    np.testing.assert_allclose(fused_loss, keras_loss, rtol=1e-5)
    for a, b in zip(fused_weights, keras_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not keras_applied
    # Every trainable variable is updated by the fused op.
    assert len(fused_applied) >= len(model.trainable_variables) > 0


def test_amsgrad_keeps_keras_update(restore, monkeypatch):
    def amsgrad():
        return keras.optimizers.Adam(1e-2, amsgrad=True)

    keras_weights, _, _, _ = _train(False, amsgrad, monkeypatch)
    fused_weights, _, applied, _ = _train(True, amsgrad, monkeypatch)
    assert not applied
    for a, b in zip(fused_weights, keras_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_on_by_default_and_off_by_environment(monkeypatch, restore):
    monkeypatch.delenv(_tf_adam.ENV, raising=False)
    assert _tf_adam.automatic()["fused_adam"] is True
    monkeypatch.setenv(_tf_adam.ENV, "0")
    record = _tf_adam.automatic()
    assert record["fused_adam"] is False
    assert _tf_adam.ENV in record["how"]


def test_eager_apply_outside_fit(restore):
    """`optimizer.apply` on Keras variables, eagerly, as custom loops do."""
    results = []
    for fused in (False, True):
        _tf_adam.use_fused_adam(fused)
        variable = keras.Variable(np.ones((3,), "float32"))
        optimizer = keras.optimizers.Adam(0.1)
        for _ in range(3):
            optimizer.apply([np.array([1.0, -2.0, 3.0], "float32")],
                            [variable])
        results.append(keras.ops.convert_to_numpy(variable))
    # Three steps of 0.1 against the gradient's sign (Adam's first steps).
    np.testing.assert_allclose(results[1], [0.7, 1.3, 0.7], rtol=1e-5)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5)
