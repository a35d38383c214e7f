"""Quantized exports, judged by accuracy on labelled images.

LiteRT takes `dynamic` (int8 weights), `float16` (float16 weights) and
`int8` (int8 weights and activations, calibrated on representative images;
the inputs and outputs stay float32); ONNX takes `dynamic` (int8 weights,
activations quantized at run time) and `int8` (static QDQ quantization with
ONNX Runtime's calibration). `evaluate_artifact` runs an artifact and its
Keras model on the same labelled images and reports both accuracies, their
top-1 agreement, the file size and the median batch-1 latency.
"""

import collections
import contextlib
import io
import logging
import os
import time

import numpy as np

QUANTIZATIONS = {
    "litert": ("dynamic", "float16", "int8"),
    "onnx": ("dynamic", "int8"),
}
# Modes that calibrate activation ranges on representative images.
CALIBRATED = ("int8",)
MIN_CALIBRATION_IMAGES = 100

Evaluation = collections.namedtuple(
    "Evaluation", ["x", "y", "max_accuracy_drop"], defaults=(None,)
)
Evaluation.__doc__ = """Labelled images to judge an export by.

`x`: float32 images `(n, height, width, 3)` in `[0, 255]`; `y`: integer
labels `(n,)`; `max_accuracy_drop`: the largest accuracy the artifact may
lose against the Keras model (e.g. `0.01`), or `None` to only report it.
"""


class AccuracyDropError(RuntimeError):
    """The artifact lost more accuracy than `max_accuracy_drop` allows.

    `report` holds the measurements (`evaluate_artifact`'s dict).
    """

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def check_quantize(export_format, quantize):
    """Raises `ValueError` unless `export_format` supports `quantize`."""
    if quantize is None:
        return
    able = QUANTIZATIONS.get(export_format, ())
    if quantize not in able:
        offered = "; ".join(f"{f}: {', '.join(m)}"
                            for f, m in QUANTIZATIONS.items())
        raise ValueError(
            f"Format {export_format!r} does not take quantize={quantize!r}. "
            f"Quantization modes per format: {offered}. "
            f"Received: format={export_format!r}, quantize={quantize!r}"
        )


def check_calibration(quantize, calibration):
    """Raises `ValueError` when `int8` has too few representative images."""
    if quantize not in CALIBRATED:
        return
    count = 0 if calibration is None else len(calibration)
    if count < MIN_CALIBRATION_IMAGES:
        raise ValueError(
            f"quantize={quantize!r} calibrates on representative images: "
            f"pass at least {MIN_CALIBRATION_IMAGES} (up to 500) from the "
            "training data. Received: "
            f"{count} calibration image(s)"
        )


def litert_options(quantize, calibration=None):
    """The LiteRT converter's settings for `quantize` (Keras passes them)."""
    if quantize is None:
        return {}
    import tensorflow as tf  # the LiteRT converter's option values

    options = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    elif quantize == "int8":
        images = np.asarray(calibration, dtype="float32")

        def representative_dataset():
            for image in images:
                yield [image[None]]

        options["representative_dataset"] = representative_dataset
    return options


def quantize_onnx(path, quantize, calibration=None):
    """Quantizes the float ONNX file at `path` in place."""
    from onnxruntime import quantization  # optional: the `export` extra

    source = path + ".float.onnx"
    os.replace(path, source)
    try:
        # ONNX Runtime logs "Please consider to run pre-processing" on the
        # root logger at WARNING for every call: advice, not a problem.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            if quantize == "dynamic":
                quantization.quantize_dynamic(
                    source, path, weight_type=quantization.QuantType.QInt8
                )
            else:
                # Percentile (99.999%) activation ranges: on EfficientNet-
                # Lite0 / Fashion-MNIST, 0.85 points below float against
                # MinMax's 1.11 and per-channel weights' 3.07
                # (benchmarks/README.md).
                # Its histogram calibrator print()s its settings: not ours
                # to show.
                with contextlib.redirect_stdout(io.StringIO()):
                    quantization.quantize_static(
                        source, path, _calibration_reader(source, calibration),
                        quant_format=quantization.QuantFormat.QDQ,
                        calibrate_method=(
                            quantization.CalibrationMethod.Percentile),
                    )
        finally:
            root.setLevel(level)
    finally:
        if os.path.exists(source):
            os.remove(source)


def _calibration_reader(path, images):
    """ONNX Runtime's calibration reader over `images`, one at a time."""
    import onnxruntime  # optional: the `export` extra
    from onnxruntime import quantization

    session = onnxruntime.InferenceSession(
        path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = np.asarray(images, dtype="float32")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.position = 0

        def get_next(self):
            if self.position >= len(rows):
                return None
            self.position += 1
            return {name: rows[self.position - 1][None]}

    return Reader()


def _size(path):
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names)


def open_runtime(path, export_format):
    """A `predict(batch) -> outputs` function that runs the artifact."""
    if export_format == "onnx":
        import onnxruntime  # optional: the `export` extra

        session = onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: batch})[0]
    if export_format == "litert":
        from transfer import _startup
        from transfer.export import exporter

        with _startup.native_logs_muted():  # the interpreter's INFO line
            interpreter = exporter.litert_interpreter(path)
        spec = interpreter.get_input_details()[0]
        output = interpreter.get_output_details()[0]
        dynamic = spec["shape_signature"][0] == -1
        shape = [None]

        def run(batch):
            if shape[0] != batch.shape:
                if dynamic:
                    interpreter.resize_tensor_input(spec["index"], batch.shape)
                with _startup.native_logs_muted():  # the XNNPACK line
                    interpreter.allocate_tensors()
                shape[0] = batch.shape
            interpreter.set_tensor(spec["index"], batch)
            interpreter.invoke()
            return np.array(interpreter.get_tensor(output["index"]))

        if dynamic:
            return run
        return lambda batch: np.concatenate(
            [run(batch[i : i + 1]) for i in range(len(batch))])
    if export_format == "saved_model":
        import tensorflow as tf  # optional heavy dependency

        loaded = tf.saved_model.load(path)
        return lambda batch: np.asarray(loaded.serve(tf.constant(batch)))
    from transfer.saving import load_model

    model = load_model(path)
    return lambda batch: np.asarray(model.predict_on_batch(batch))


def evaluate_artifact(model, path, export_format, evaluation, *,
                      batch_size=32, latency_runs=20):
    """Accuracy of the artifact at `path` against the Keras `model`.

    Args:
        model: the Keras model that was exported.
        path: the artifact (file or SavedModel directory).
        export_format: its format.
        evaluation: an `Evaluation` (`x`, `y`, `max_accuracy_drop`).
        batch_size: images run at a time. Defaults to `32`.
        latency_runs: batch-1 runs timed (median reported). Defaults to
            `20`.

    Returns:
        A dict: `num_images`, `keras_accuracy`, `artifact_accuracy`,
        `accuracy_drop` (Keras minus artifact), `top1_agreement`,
        `file_size_bytes`, `latency_ms_batch1`, `images_per_second` (the
        accuracy pass in batches of `batch_size`, first batch left out)
        and `batch_size`.
    """
    x = np.asarray(evaluation.x, dtype="float32")
    y = np.asarray(evaluation.y).astype("int64")
    if not len(x) or len(x) != len(y):
        raise ValueError(
            "An export is judged on labelled images: `evaluation.x` and "
            "`evaluation.y` must be non-empty and of the same length. "
            f"Received: {len(x)} images, {len(y)} labels"
        )
    predict = open_runtime(path, export_format)
    outputs, start = [], None
    for i in range(0, len(x), batch_size):
        outputs.append(np.asarray(predict(x[i : i + batch_size])))
        if start is None:  # the first batch allocates and warms up
            start = time.perf_counter()
    seconds = time.perf_counter() - start
    timed = len(x) - len(outputs[0])
    artifact = np.concatenate(outputs)
    keras_out = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    keras_top, artifact_top = keras_out.argmax(-1), artifact.argmax(-1)
    timings = []
    for i in range(latency_runs + 1):
        image = x[i % len(x)][None]
        start = time.perf_counter()
        predict(image)
        timings.append(time.perf_counter() - start)
    keras_accuracy = float(np.mean(keras_top == y))
    artifact_accuracy = float(np.mean(artifact_top == y))
    return {
        "num_images": int(len(x)),
        "keras_accuracy": keras_accuracy,
        "artifact_accuracy": artifact_accuracy,
        "accuracy_drop": keras_accuracy - artifact_accuracy,
        "top1_agreement": float(np.mean(keras_top == artifact_top)),
        "file_size_bytes": int(_size(path)),
        # The first run (allocation, warm-up) is left out.
        "latency_ms_batch1": float(np.median(timings[1:]) * 1000),
        # Every batch of the accuracy pass but the first; `None` when
        # there was one batch.
        "images_per_second": (float(timed / seconds) if timed and seconds
                              else None),
        "batch_size": int(batch_size),
    }
