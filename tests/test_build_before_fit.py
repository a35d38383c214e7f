"""`stage_options.build_before_fit`: on TensorFlow the training step is
traced once, not twice, and training is unchanged.

Covers: transfer/training/stage_options.py (build_before_fit).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import transfer
from transfer.training import stage_options


def _compiled(seed=0):
    keras.utils.set_random_seed(seed)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    stage_options.compile_model(model, keras.optimizers.Adam(1e-3))
    return model


def _count_traces(model):
    calls = []
    step = model.train_step

    def counted(data):
        calls.append(1)
        return step(data)

    model.train_step = counted
    return calls


@pytest.mark.requires_backend("tensorflow")
@pytest.mark.parametrize("kind", ["dataset", "arrays"])
def test_one_trace_and_the_same_training(tiny_data, kind):
    x, y = tiny_data
    data = (tf.data.Dataset.from_tensor_slices((x, y)).batch(8),) \
        if kind == "dataset" else (x, y)
    histories, traces = [], []
    for prebuild in (False, True):
        model = _compiled()
        calls = _count_traces(model)
        if prebuild:
            assert stage_options.build_before_fit(model, *data)
            assert model.optimizer.built
        history = model.fit(*data, batch_size=8, epochs=2, shuffle=False,
                            verbose=0)
        histories.append(history.history["loss"])
        traces.append(len(calls))
        keras.backend.clear_session()
    # Keras alone traces the step twice (its variables are created in the
    # first trace); built before, once.
    assert traces == [2, 1]
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-5)


@pytest.mark.requires_backend("tensorflow")
def test_what_it_cannot_build_is_left_to_keras(tiny_data):
    model = _compiled()
    # A PyDataset's batches are not read ahead of `fit`.
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return tiny_data

    assert not stage_options.build_before_fit(model, Batches())
    assert not model.optimizer.built
    model.fit(Batches(), epochs=1, verbose=0)


@pytest.mark.requires_backend("tensorflow", "torch")
def test_a_no_op_on_torch(tiny_data):
    model = _compiled()
    built = stage_options.build_before_fit(model, *tiny_data)
    assert built == (keras.config.backend() == "tensorflow")


class PooledDense(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(keras.ops.mean(inputs, axis=(1, 2)))


@pytest.mark.requires_backend("tensorflow")
@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_functional_models_are_built_without_running_them(
        tiny_data, kind, monkeypatch):
    """A built functional model's metrics, loss and optimizer are built
    from its output shapes, without calling it (Keras's own build runs
    the model once more); other models keep Keras's build."""
    x, y = tiny_data
    if kind == "functional":
        model = _compiled()
    else:
        model = PooledDense()
        model(x[:1])
        stage_options.compile_model(model, keras.optimizers.Adam(1e-3))
    calls = []
    call = type(model).call

    def counted(self, *args, **kwargs):
        calls.append(1)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "call", counted)
    assert stage_options.build_before_fit(model, x, y)
    monkeypatch.undo()
    assert len(calls) == (0 if kind == "functional" else 1)
    assert model.optimizer.built
    assert model._compile_metrics.built and model._compile_loss.built
    calls = _count_traces(model)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert len(calls) == 1
    assert set(history.history) == {"loss", "accuracy"}


@pytest.mark.requires_backend("tensorflow")
def test_multiple_outputs_are_built_from_the_graph(tiny_data):
    x, _ = tiny_data
    inputs = keras.Input(x.shape[1:])
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, {"a": keras.layers.Dense(2, name="a")(pooled),
                                 "b": keras.layers.Dense(1, name="b")(pooled)})
    model.compile(optimizer="adam",
                  loss={"a": "sparse_categorical_crossentropy", "b": "mse"},
                  metrics={"a": ["accuracy"]})
    targets = {"a": np.zeros(len(x), "int32"), "b": np.ones(len(x))}
    assert stage_options.build_before_fit(model, x, targets)
    calls = _count_traces(model)
    history = model.fit(x, targets, batch_size=8, epochs=1, verbose=0)
    assert len(calls) == 1
    assert "a_accuracy" in history.history
