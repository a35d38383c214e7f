"""An exported artifact opened in its own runtime, for `transfer predict`.

`open_artifact(path)` reads the artifact's own metadata
(`transfer.export.read_metadata`) and opens it in its runtime (ONNX Runtime,
the LiteRT interpreter, TensorFlow for a SavedModel, Keras for a `.keras`
file). The object it returns answers what `transfer.prediction` asks of a
model (`predict_on_batch`, `input_shape`, `output_shape` and a
`transfer_metadata` with the class names, the interpolation and whether the
outputs are logits), so `transfer predict model.onnx photos/` predicts with
the artifact alone: no run directory, no Keras model.
"""

import os

import numpy as np

from transfer.export import metadata as metadata_lib
from transfer.export import quantization


def is_artifact(path):
    """Whether `path` is an exported file or SavedModel, not a run directory.

    Example:

    >>> import os
    >>> os.makedirs("runs/flowers", exist_ok=True)
    >>> is_artifact("runs/flowers"), is_artifact("no/such/model.onnx")
    (False, False)
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return True
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


class Artifact:
    """An exported image classifier, run in its own runtime.

    Attributes:
        path: the artifact.
        export_format: `"onnx"`, `"litert"`, `"saved_model"` or `"keras"`.
        metadata: what the artifact carries (`read_metadata`).
        transfer_metadata: `class_names`, `interpolation`, `modality`,
            `output` (`"logits"` or `"probabilities"`) and `calibration`,
            as a run's model records them.
        input_shape, output_shape: with `None` for the batch.
    """

    def __init__(self, path):
        path = os.fspath(path)
        meta = metadata_lib.read_metadata(path)
        if meta.get("modality", "image") != "image":
            raise ValueError(
                f"'{path}' is a {meta.get('modality')} model; `transfer "
                "predict` reads exported image classifiers (predict text "
                "with the run directory). Received: "
                f"modality={meta.get('modality')!r}"
            )
        self.path = path
        self.export_format = meta.get("format") or metadata_lib._format_of(path)
        self.metadata = meta
        self.transfer_metadata = {
            "class_names": list(meta["class_names"]),
            "interpolation": meta["preprocessing"]["interpolation"],
            "modality": "image",
            "output": meta["output"],
            # Temperature and OOD threshold: calibrated as the run predicts.
            "calibration": meta.get("calibration"),
        }
        self.input_shape = (None, *meta["input"]["shape"])
        self.output_shape = (None, len(meta["class_names"]))
        self._run = quantization.open_runtime(path, self.export_format)

    def predict_on_batch(self, batch):
        """The artifact's outputs for a `(batch, height, width, 3)` array."""
        return np.asarray(self._run(np.ascontiguousarray(batch, "float32")))

    def __repr__(self):
        return (f"Artifact({self.path!r}, format={self.export_format!r}, "
                f"classes={len(self.transfer_metadata['class_names'])})")


def open_artifact(path):
    """Opens an exported image classifier for `transfer.prediction`.

    Args:
        path: an `.onnx`, `.tflite` or `.keras` file, or a SavedModel
            directory, written by `transfer export` (it carries its class
            names and preprocessing).

    Returns:
        An `Artifact`: pass it to `transfer.prediction.predict_files` or
        `iter_predictions` as the model.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: the artifact carries no `transfer` metadata, or is not
            an image classifier.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> _ = transfer.export.export_model(model, "model.keras", "keras")
    >>> artifact = transfer.export.open_artifact("model.keras")
    >>> artifact.transfer_metadata["class_names"], artifact.input_shape
    (['0', '1'], (None, 32, 32, 3))
    """
    return Artifact(path)
