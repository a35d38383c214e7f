"""TensorFlow on a CPU skips Grappler (`transfer._tf_graph`): applied and
recorded by default, kept off by environment, a process's own choice
kept, and training gives the same weights either way."""

import keras
import numpy as np
import pytest

import transfer
from transfer import _backend
from transfer import _tf_graph

pytestmark = pytest.mark.requires_backend("tensorflow")


@pytest.fixture
def restore():
    """Puts back what the suite runs with, and forgets a process choice
    a test made."""
    from tensorflow.python.eager import context

    before = context.context()._optimizer_experimental_options.get(
        _tf_graph.OPTION)
    state = dict(_tf_graph._STATE)
    yield
    options = context.context()._optimizer_experimental_options
    options.pop(_tf_graph.OPTION, None)
    if before is not None:
        options[_tf_graph.OPTION] = before
    _tf_graph._STATE.clear()
    _tf_graph._STATE.update(state)


def _options():
    import tensorflow as tf

    return tf.config.optimizer.get_experimental_options()


def test_skipped_on_a_cpu_by_default_and_kept_by_environment(
        monkeypatch, restore):
    if _backend.accelerator() != "cpu":
        pytest.skip("Grappler stays on with a GPU")
    monkeypatch.delenv(_tf_graph.ENV, raising=False)
    record = _tf_graph.automatic()
    assert record == {"grappler": False,
                      "how": f"{_tf_graph.ENV}=0 keeps Grappler"}
    assert _options()[_tf_graph.OPTION] is True
    monkeypatch.setenv(_tf_graph.ENV, "0")
    record = _tf_graph.automatic()
    assert record["grappler"] is True
    assert _options()[_tf_graph.OPTION] is False
    assert _tf_graph.ENV in record["how"]


def test_a_process_choice_is_kept(monkeypatch, restore):
    import tensorflow as tf

    monkeypatch.delenv(_tf_graph.ENV, raising=False)
    _tf_graph._STATE.clear()  # as in a fresh process, before `automatic`
    tf.config.optimizer.set_experimental_options({_tf_graph.OPTION: False})
    record = _tf_graph.automatic()
    assert record["grappler"] is True
    assert "process" in record["how"]
    assert _options()[_tf_graph.OPTION] is False


def _train(skip):
    _tf_graph.skip_grappler(skip)
    keras.utils.set_random_seed(5)
    model = transfer.build_classifier("tiny_cnn", 3, weights=None,
                                      dropout=0.0)
    transfer.set_trainable_blocks(model, "all")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    x, y = transfer.synthetic_images(num_samples=32, image_size=32,
                                     num_classes=3, seed=1)
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False,
                        verbose=0)
    return (model.get_weights(), history.history["loss"],
            model.predict(x, verbose=0))


def test_same_training_with_and_without_grappler(restore):
    with_grappler = _train(False)
    without = _train(True)
    np.testing.assert_allclose(without[1], with_grappler[1], rtol=1e-5)
    for a, b in zip(without[0], with_grappler[0], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(without[2], with_grappler[2], rtol=1e-4,
                               atol=1e-5)

