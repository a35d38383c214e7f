"""`export_model`: write an artifact atomically, then check its parity.

`export_model` writes a `.keras` file, a TensorFlow SavedModel, an ONNX file
or a LiteRT (TFLite) flatbuffer through Keras's own exporters, adds the
metadata that makes it self-describing (`transfer.export.metadata`), runs
the artifact in its own runtime (Keras, TensorFlow, ONNX Runtime, the
LiteRT interpreter) on sample inputs and compares it with the Keras model.
All of that happens under a temporary name in the target's folder; only a
finished, checked artifact is renamed to the target.
"""

import logging
import os
import shutil
import uuid

import numpy as np

from transfer import _backend
from transfer import _io
from transfer import _startup
from transfer._io import check_writable
from transfer.export import metadata as metadata_lib
from transfer.export import quantization
from transfer.export.saved_model import write_saved_model
from transfer.saving import load_model
from transfer.saving import save_model

logger = logging.getLogger(__name__)

FORMATS = ("keras", "saved_model", "onnx", "litert")
QUANTIZATIONS = quantization.QUANTIZATIONS
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
            message names the backend that can), or a `quantize` mode the
            format does not take (`QUANTIZATIONS` lists them per format).
    """
    if export_format not in FORMATS:
        raise ValueError(
            f"Unknown export format {export_format!r}. Choose one of "
            f"{list(FORMATS)}. Received: format={export_format!r}"
        )
    quantization.check_quantize(export_format, quantize)
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
    import onnxruntime  # optional heavy dependency: the `export` extra

    session = onnxruntime.InferenceSession(
        path, providers=["CPUExecutionProvider"]
    )
    spec = session.get_inputs()[0]
    if not isinstance(spec.shape[0], str):
        raise RuntimeError(
            f"The ONNX file at '{path}' has a fixed batch dimension "
            f"{spec.shape[0]!r}; transfer exports a dynamic one."
        )
    return session.run(None, {spec.name: inputs})[0]


def litert_interpreter(path):
    """The LiteRT interpreter (TensorFlow's when ai-edge-litert is absent)."""
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
    interpreter = litert_interpreter(path)
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


def _temporary_path(path):
    """A name beside `path`, hidden, with the same extension."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".tmp-{uuid.uuid4().hex[:12]}-{name}")


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _put_in_place(tmp, path):
    """Renames the finished artifact `tmp` to `path`, replacing it.

    A file is replaced in one `os.replace`. A directory (SavedModel) cannot
    replace a non-empty one in one step: the old one is renamed aside
    first, the new one moved in, then the old one removed.
    """
    if not os.path.isdir(tmp) or not os.path.lexists(path):
        os.replace(tmp, path)
        return
    aside = _temporary_path(path) + ".old"
    os.replace(path, aside)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(aside, path)
        raise
    _remove(aside)


def _write_artifact(model, path, export_format, meta, calibration):
    """Writes the artifact itself (no checks) at `path`."""
    quantize = meta["quantize"]
    if export_format == "keras":
        save_model(model, path)
    elif export_format == "saved_model":
        write_saved_model(model, path, meta)
    elif export_format == "litert":
        # The converter prints "fully_quantize: 0, ..." natively.
        with _startup.native_logs_muted():
            model.export(path, format="litert", verbose=False,
                         **quantization.litert_options(quantize, calibration))
    else:
        # The model's input signature has a `None` batch: Keras's torch
        # exporter then passes `dynamic_axes` (TorchScript exporter), and
        # tf2onnx keeps it, so ONNX files take any batch size.
        model.export(path, format="onnx", verbose=False)
        if quantize is not None:
            quantization.quantize_onnx(path, quantize, calibration)
    metadata_lib.WRITERS[export_format](path, meta)


def export_model(model, path, export_format, *, quantize=None, samples=None,
                 calibration=None, evaluation=None):
    """Exports `model`, reruns the artifact and compares its outputs.

    The artifact is written under a temporary name in the target's folder
    (`.tmp-<random>-<name>`), given its metadata, run in its own runtime,
    and only then renamed to `path`: an export that fails at any step
    (conversion, a full disk, a parity run that cannot run the artifact)
    leaves no file at `path` (and any previous one untouched).

    Every artifact describes itself: class names, input size, the
    preprocessing it expects and has inside, `transfer` and Keras versions
    (`transfer.export.read_metadata` reads them back; see
    `transfer.export.metadata` for where each format keeps them). ONNX files
    take any batch size, on TensorFlow and torch alike. On TensorFlow a
    SavedModel also has a `serve_images` signature that takes encoded
    JPEG/PNG bytes (`transfer.export.saved_model`).

    Args:
        model: a `keras.Model` (called at least once, as every model from
            `build_classifier` or `load_model` is).
        path: the file (or, for `saved_model`, directory) to write.
        export_format: `"keras"`, `"saved_model"`, `"onnx"` or `"litert"`.
        quantize: `None` for float32; LiteRT takes `"dynamic"` (int8
            weights), `"float16"` and `"int8"` (weights and activations),
            ONNX `"dynamic"` and `"int8"` (`QUANTIZATIONS`). Defaults to
            `None`.
        samples: inputs for the parity check. Defaults to `None`: 4 seeded
            random images in `[0, 255]` (or short texts).
        calibration: representative float32 images in `[0, 255]`, 100 to
            500 from the training data, for `quantize="int8"`. Defaults to
            `None`.
        evaluation: an `Evaluation(x, y, max_accuracy_drop)` of labelled
            images: the artifact is judged on them against the Keras model
            (`evaluate_artifact`) before it is put in place. Defaults to
            `None`.

    Returns:
        A dict: `format`, `path`, `backend`, `quantize`, `num_samples`,
        `max_abs_diff` (artifact vs Keras model, over all outputs),
        `metadata` (what the artifact carries) and, with `evaluation`,
        `evaluation` (accuracies, top-1 agreement, size, latency).

    Raises:
        ValueError: a format this backend cannot export (the message names
            one that can), a bad `quantize`, too few calibration images, or
            a `path` that cannot be written (checked before converting).
        AccuracyDropError: the artifact lost more accuracy than
            `evaluation.max_accuracy_drop`; nothing was written at `path`.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> result = transfer.export.export_model(model, "model.onnx", "onnx")
    >>> result["format"], result["num_samples"]
    ('onnx', 4)
    >>> result["max_abs_diff"] < 1e-4  # ONNX Runtime agrees with Keras
    True
    >>> transfer.export.read_metadata("model.onnx")["input"]["shape"]
    [32, 32, 3]
    """
    check_export_request(export_format, quantize)
    quantization.check_calibration(quantize, calibration)
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
    meta = metadata_lib.artifact_metadata(
        model, export_format, quantize=quantize
    )
    tmp = _temporary_path(path)
    judged = None
    try:
        _write_artifact(model, tmp, export_format, meta, calibration)
        actual = np.asarray(
            RUNNERS[export_format](tmp, samples), dtype="float32"
        )
        if actual.shape != expected.shape:
            raise RuntimeError(
                f"The exported {export_format} artifact for '{path}' returned "
                f"shape {actual.shape}, the Keras model {expected.shape}; "
                "nothing was written."
            )
        if evaluation is not None:
            judged = quantization.evaluate_artifact(
                model, tmp, export_format, evaluation)
            _check_accuracy(path, judged, evaluation.max_accuracy_drop)
        _put_in_place(tmp, path)
    except OSError as e:
        raise _io.write_error(e, path) from e
    finally:
        _remove(tmp)
    result = {
        "format": export_format,
        "path": path,
        "backend": _backend.backend(),
        "quantize": quantize,
        "num_samples": int(len(samples)),
        "max_abs_diff": float(np.max(np.abs(actual - expected))),
        "metadata": meta,
    }
    if judged is not None:
        result["evaluation"] = judged
    return result


def _check_accuracy(path, judged, max_drop):
    if max_drop is None or judged["accuracy_drop"] <= max_drop:
        return
    raise quantization.AccuracyDropError(
        f"The export for '{path}' loses {judged['accuracy_drop']:.4f} "
        f"accuracy against the Keras model ({judged['artifact_accuracy']:.4f}"
        f" vs {judged['keras_accuracy']:.4f} on {judged['num_images']} "
        f"images), over max_accuracy_drop={max_drop}; nothing was written. "
        "Try another quantization mode, or more calibration images.",
        judged,
    )
