"""Deployable exports: self-describing, written atomically, parity-checked.

`export_model` writes a `.keras` file, a TensorFlow SavedModel, an ONNX file
or a LiteRT (TFLite) flatbuffer (`exporter`), each carrying its class names,
input size, preprocessing and versions (`metadata`; `read_metadata` reads
them back from the artifact alone). SavedModels exported on TensorFlow also
take encoded images (`saved_model`). Quantized exports are judged by their
accuracy against the Keras model (`quantization`). `open_artifact` opens
an export in its own runtime for `transfer.prediction` (`artifact`).
"""

from transfer.export.artifact import Artifact
from transfer.export.artifact import is_artifact
from transfer.export.artifact import open_artifact
from transfer.export.exporter import FILE_NAMES
from transfer.export.exporter import FORMATS
from transfer.export.exporter import QUANTIZATIONS
from transfer.export.exporter import RUNNERS
from transfer.export.exporter import check_export_request
from transfer.export.exporter import export_model
from transfer.export.exporter import sample_inputs
from transfer.export.metadata import artifact_metadata
from transfer.export.metadata import read_metadata
from transfer.export.quantization import AccuracyDropError
from transfer.export.quantization import Evaluation
from transfer.export.quantization import evaluate_artifact

__all__ = [
    "AccuracyDropError",
    "Artifact",
    "Evaluation",
    "FILE_NAMES",
    "FORMATS",
    "QUANTIZATIONS",
    "RUNNERS",
    "artifact_metadata",
    "check_export_request",
    "evaluate_artifact",
    "export_model",
    "is_artifact",
    "open_artifact",
    "read_metadata",
    "sample_inputs",
]
