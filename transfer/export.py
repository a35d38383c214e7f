"""Deployable exports with a parity check against the Keras model.

`export_model` writes a `.keras` file, a TensorFlow SavedModel, an ONNX file
or a LiteRT (TFLite) flatbuffer through Keras's own `model.export`, then
runs the artifact in its own runtime (Keras, TensorFlow, ONNX Runtime, the
LiteRT interpreter) on sample inputs and reports the largest absolute
difference from the Keras model's outputs.
"""

import logging
import os

import numpy as np

from transfer import _backend
from transfer import _startup
from transfer._io import check_writable
from transfer.saving import load_model
from transfer.saving import save_model

logger = logging.getLogger(__name__)

FORMATS = ("keras", "saved_model", "onnx", "litert")
QUANTIZATIONS = ("dynamic",)
FILE_NAMES = {
    "keras": "model.keras",
    "saved_model": "saved_model",
    "onnx": "model.onnx",
    "litert": "model.tflite",
}


def check_export_request(export_format, quantize=None):
    """Checks the format, the backend and `quantize` before any work.

    Raises:
        ValueError: an unknown format, one this backend cannot export (the
            message names the backend that can), or `quantize` on a format
            other than LiteRT.
    """
    if export_format not in FORMATS:
        raise ValueError(
            f"Unknown export format {export_format!r}. Choose one of "
            f"{list(FORMATS)}. Received: format={export_format!r}"
        )
    if quantize is not None and (
        export_format != "litert" or quantize not in QUANTIZATIONS
    ):
        raise ValueError(
            f"`quantize` supports {list(QUANTIZATIONS)} with format 'litert' "
            f"only. Received: format={export_format!r}, quantize={quantize!r}"
        )
    _backend.check_export_format(export_format)


def sample_inputs(model, num_samples=4, seed=0):
    """Seeded inputs for a parity check: `[0, 255]` pixels or short texts."""
    rng = np.random.default_rng(seed)
    if (getattr(model, "transfer_metadata", None) or {}).get("modality") == (
        "text"
    ):
        words = ["model", "data", "light", "play", "food", "team", "code"]
        return np.asarray(
            [" ".join(rng.choice(words, 6)) for _ in range(num_samples)],
            dtype=object,
        )
    shape = tuple(int(d) for d in model.input_shape[1:])
    return rng.uniform(0, 255, (num_samples, *shape)).astype("float32")


def _run_keras(path, inputs):
    return np.asarray(load_model(path).predict(inputs, verbose=0))


def _run_saved_model(path, inputs):
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    return np.asarray(loaded.serve(tf.constant(inputs)))


def _run_onnx(path, inputs):
    import onnxruntime

    session = onnxruntime.InferenceSession(
        path, providers=["CPUExecutionProvider"]
    )
    spec = session.get_inputs()[0]
    if isinstance(spec.shape[0], int):
        # A fixed batch dimension (the torch exporter fixes it to 1).
        rows = [session.run(None, {spec.name: inputs[i : i + 1]})[0]
                for i in range(len(inputs))]
        return np.concatenate(rows)
    return session.run(None, {spec.name: inputs})[0]


def _litert_interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path)


def _run_litert(path, inputs):
    # The interpreter prints an INFO line that no setting silences.
    with _startup.native_logs_muted():
        return _litert_outputs(path, inputs)


def _litert_outputs(path, inputs):
    interpreter = _litert_interpreter(path)
    spec = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]
    if spec["shape_signature"][0] == -1:
        interpreter.resize_tensor_input(spec["index"], inputs.shape)
        batches = [inputs]
    else:
        batches = [inputs[i : i + 1] for i in range(len(inputs))]
    interpreter.allocate_tensors()
    rows = []
    for batch in batches:
        interpreter.set_tensor(spec["index"], batch)
        interpreter.invoke()
        rows.append(np.array(interpreter.get_tensor(output["index"])))
    return np.concatenate(rows)


RUNNERS = {
    "keras": _run_keras,
    "saved_model": _run_saved_model,
    "onnx": _run_onnx,
    "litert": _run_litert,
}


def export_model(model, path, export_format, *, quantize=None, samples=None):
    """Exports `model`, reruns the artifact and compares its outputs.

    Args:
        model: a `keras.Model` (called at least once, as every model from
            `build_classifier` or `load_model` is).
        path: the file (or, for `saved_model`, directory) to write.
        export_format: `"keras"`, `"saved_model"`, `"onnx"` or `"litert"`.
        quantize: `"dynamic"` for dynamic-range int8 weights (LiteRT only),
            or `None` for float32. Defaults to `None`.
        samples: inputs for the parity check. Defaults to `None`: 4 seeded
            random images in `[0, 255]` (or short texts).

    Returns:
        A dict: `format`, `path`, `backend`, `quantize`, `num_samples` and
        `max_abs_diff` (artifact vs Keras model, over all outputs).

    Raises:
        ValueError: a format this backend cannot export (the message names
            one that can), a bad `quantize`, or a `path` that cannot be
            written (checked before converting).

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> result = transfer.export.export_model(model, "model.onnx", "onnx")
    >>> result["format"], result["num_samples"]
    ('onnx', 4)
    >>> result["max_abs_diff"] < 1e-4  # ONNX Runtime agrees with Keras
    True
    """
    check_export_request(export_format, quantize)
    metadata = getattr(model, "transfer_metadata", None) or {}
    if metadata.get("modality") == "text" and export_format != "keras":
        # Keras traces a KerasHub text classifier's serving function on its
        # preprocessed inputs (a dict of token ids), not on strings: the
        # artifact would not take the texts this check (and users) pass.
        raise ValueError(
            "Text classifiers export to 'keras' only: the SavedModel, ONNX "
            "and LiteRT signatures Keras writes for them take token ids, not "
            "strings. Use --format keras (load it with transfer.load_model). "
            f"Received: format={export_format!r}"
        )
    path = os.fspath(path)
    check_writable(path)  # converting takes seconds to minutes
    if samples is None:
        samples = sample_inputs(model)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Also builds the call graph Keras's exporters trace: a freshly loaded
    # model has "never been called" otherwise.
    expected = np.asarray(model.predict(samples, verbose=0), dtype="float32")
    if export_format == "keras":
        save_model(model, path)
    else:
        keras_format = {"saved_model": "tf_saved_model"}.get(
            export_format, export_format
        )
        kwargs = {}
        if quantize == "dynamic":
            import tensorflow as tf

            kwargs["optimizations"] = [tf.lite.Optimize.DEFAULT]
        model.export(path, format=keras_format, verbose=False, **kwargs)
    actual = np.asarray(RUNNERS[export_format](path, samples), dtype="float32")
    if actual.shape != expected.shape:
        raise RuntimeError(
            f"The exported {export_format} artifact at '{path}' returned "
            f"shape {actual.shape}, the Keras model {expected.shape}."
        )
    return {
        "format": export_format,
        "path": path,
        "backend": _backend.backend(),
        "quantize": quantize,
        "num_samples": int(len(samples)),
        "max_abs_diff": float(np.max(np.abs(actual - expected))),
    }
