"""What an exported artifact says about itself, written into the artifact.

Every export carries one JSON object (`artifact_metadata`): the class names
in output order, the input it takes (size, dtype, value range, layout), the
preprocessing it expects before the call (resizing, with which
interpolation) and the one it has inside (the `Rescaling` layer), whether
it returns logits or probabilities, and the `transfer`, Keras and backend
versions that wrote it. Where it lives, per format:

- ONNX: `metadata_props`, key `transfer` (the whole object) and key
  `class_names` (the JSON list alone), as ONNX Runtime's
  `session.get_modelmeta().custom_metadata_map` returns them.
- LiteRT: a `Model.metadata` entry named `transfer` of the flatbuffer, whose
  buffer holds the JSON (UTF-8). The TFLite Support `TFLITE_METADATA` schema
  is not used: its writer (`tflite-support`) is unmaintained since 2023.
- SavedModel: `assets/transfer.json`; the TensorFlow backend's
  `serve_images` signature also returns the class names.
- `.keras`: a `transfer.json` member of the zip archive (Keras ignores
  members it does not know); `transfer.load_model` restores it as
  `model.transfer_metadata` when no run manifest sits beside the file.

`read_metadata(path)` reads it back from any of the four.
"""

import json
import os
import zipfile

import keras
import numpy as np

from transfer import _backend
from transfer import _model_info
from transfer._version import __version__

# The name of the metadata entry in each format.
KEY = "transfer"
FILE_NAME = "transfer.json"
SCHEMA_VERSION = 1


def _class_names(model):
    names = _model_info.metadata(model).get("class_names")
    if names:
        return [str(n) for n in names]
    return [str(i) for i in range(int(model.output_shape[-1]))]


def _rescaling(model):
    """`{"scale", "offset"}` of the model's `preprocessing` layer, or None."""
    try:
        layer = model.get_layer("preprocessing")
    except ValueError:
        return None
    if not isinstance(layer, keras.layers.Rescaling):
        return None
    return {
        "scale": np.asarray(layer.scale, dtype="float64").tolist(),
        "offset": np.asarray(layer.offset, dtype="float64").tolist(),
    }


def artifact_metadata(model, export_format, *, quantize=None):
    """The JSON-ready description an export of `model` carries.

    Args:
        model: the `keras.Model` being exported (an image classifier from
            `build_classifier` or a run).
        export_format: `"keras"`, `"saved_model"`, `"onnx"` or `"litert"`.
        quantize: the quantization mode, or `None` for float32. Defaults to
            `None`.

    Returns:
        A dict: `schema_version`, `class_names`, `num_classes`, `task`,
        `modality`, `input` (`shape` without the batch, `dtype`, `range`,
        `layout`, `color`), `preprocessing` (`resize`, `interpolation`,
        `inside`), `output` (`"logits"` or `"probabilities"`),
        `calibration` (the run's temperature and out-of-distribution
        threshold, `transfer.calibration`; `None` when the model records
        none), `backbone`, `format`, `quantize`, `transfer_version`,
        `keras_version` and `backend`.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> meta = transfer.export.artifact_metadata(model, "onnx")
    >>> meta["class_names"], meta["input"]["shape"], meta["output"]
    (['0', '1'], [32, 32, 3], 'logits')
    """
    info = _model_info.metadata(model)
    names = _class_names(model)
    modality = info.get("modality") or "image"
    meta = {
        "schema_version": SCHEMA_VERSION,
        "class_names": names,
        "num_classes": len(names),
        "task": _model_info.model_task(model),
        "modality": modality,
    }
    if modality == "image":
        shape = [int(d) for d in model.input_shape[1:]]
        rescaling = _rescaling(model)
        meta["input"] = {
            "shape": shape,
            "dtype": "float32",
            "range": [0, 255],
            "layout": "NHWC (batch, height, width, channels)",
            "color": "RGB",
        }
        meta["preprocessing"] = {
            "resize": shape[:2],
            "interpolation": info.get("interpolation") or "bilinear",
            "inside": (
                {"rescaling": rescaling} if rescaling is not None else {}
            ),
            "note": (
                "Resize the RGB image to `resize` (height, width) with "
                "`interpolation`, pass float32 pixels in [0, 255]; the "
                "artifact applies `inside` itself."
            ),
        }
    else:
        meta["input"] = {"dtype": "string", "text": True}
    meta.update(
        output="logits" if _model_info.is_logits(model) else "probabilities",
        # Prediction divides the outputs by its temperature (as logits).
        calibration=info.get("calibration"),
        backbone=info.get("backbone"),
        format=export_format,
        quantize=quantize,
        transfer_version=__version__,
        keras_version=keras.__version__,
        backend=_backend.backend(),
    )
    return meta


def _dumps(meta):
    return json.dumps(meta, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------- writers


def write_onnx_metadata(path, meta):
    """Adds `metadata_props` `transfer` and `class_names` to the ONNX file.

    The file is rewritten in place (it is still the temporary file of
    `export_model`). External tensor data, if any, stays where it is.
    """
    import onnx  # optional heavy dependency: the `export` extra

    proto = onnx.load(path, load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({KEY: _dumps(meta), "class_names": json.dumps(
        meta["class_names"])})
    del proto.metadata_props[:]
    for key, value in sorted(props.items()):
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, path)


def _litert_schema():
    """`(schema module, flatbuffer_utils module)` of LiteRT, else of TF."""
    try:  # optional heavy dependency: the `export` extra's ai-edge-litert
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
        from tensorflow.lite.tools import flatbuffer_utils
    return schema, flatbuffer_utils


def write_litert_metadata(path, meta):
    """Adds (or replaces) the `transfer` metadata entry of a `.tflite` file."""
    schema, flatbuffer_utils = _litert_schema()
    with open(path, "rb") as f:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(f.read()))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(_dumps(meta).encode("utf-8"), dtype="uint8")
    model.buffers.append(buffer)
    entries = [m for m in (model.metadata or [])
               if _text(m.name) != KEY]
    entry = schema.MetadataT()
    entry.name = KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*entries, entry]
    data = flatbuffer_utils.convert_object_to_bytearray(model)
    with open(path, "wb") as f:
        f.write(bytes(data))


def write_saved_model_metadata(path, meta):
    """Writes `assets/transfer.json` into the SavedModel directory."""
    assets = os.path.join(path, "assets")
    os.makedirs(assets, exist_ok=True)
    with open(os.path.join(assets, FILE_NAME), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def write_keras_metadata(path, meta):
    """Appends a `transfer.json` member to the `.keras` archive."""
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        if FILE_NAME not in z.namelist():
            z.writestr(FILE_NAME, json.dumps(meta, indent=2, sort_keys=True))


WRITERS = {
    "keras": write_keras_metadata,
    "saved_model": write_saved_model_metadata,
    "onnx": write_onnx_metadata,
    "litert": write_litert_metadata,
}


# ----------------------------------------------------------------- readers


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _read_onnx(path):
    import onnx  # optional heavy dependency: the `export` extra

    proto = onnx.load(path, load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return props.get(KEY)


def _read_litert(path):
    schema, _ = _litert_schema()
    with open(path, "rb") as f:
        data = f.read()
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _text(entry.Name()) == KEY:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def _read_saved_model(path):
    file = os.path.join(path, "assets", FILE_NAME)
    if not os.path.exists(file):
        return None
    with open(file, "rb") as f:
        return f.read()


def read_keras_metadata(path):
    """The `transfer.json` member of a `.keras` archive (a dict), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            if FILE_NAME not in archive.namelist():
                return None
            return json.loads(archive.read(FILE_NAME))
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _format_of(path):
    if os.path.isdir(path):
        return "saved_model"
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:2] == b"PK":
        return "keras"
    if head[4:8] == b"TFL3":
        return "litert"
    return "onnx"


def read_metadata(path):
    """The metadata an exported artifact carries (`artifact_metadata`).

    Works on the files `export_model` writes: `.onnx`, `.tflite`, SavedModel
    directories and `.keras` files, told apart by their content, not their
    name. Needs only the artifact: no run directory, no Keras model.

    Args:
        path: the exported file or SavedModel directory.

    Returns:
        A dict with `class_names`, `input`, `preprocessing`, `output`,
        `transfer_version`, `keras_version`...

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: the artifact carries no `transfer` metadata (exported by
            something else, or by `transfer` before 0.1.0's issue 20).

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> _ = transfer.export.export_model(model, "model.keras", "keras")
    >>> transfer.export.read_metadata("model.keras")["class_names"]
    ['0', '1']
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No exported artifact at '{path}'.")
    export_format = _format_of(path)
    if export_format == "keras":
        meta = read_keras_metadata(path)
        raw = None if meta is None else _dumps(meta)
    else:
        reader = {"saved_model": _read_saved_model, "onnx": _read_onnx,
                  "litert": _read_litert}[export_format]
        try:
            raw = reader(path)
        except Exception as e:  # a corrupt file, whatever the parser says
            raise ValueError(
                f"Cannot read '{path}' as a {export_format} artifact "
                f"({type(e).__name__}: {e}). Received: path={path!r}"
            ) from e
    if raw is None:
        raise ValueError(
            f"'{path}' ({export_format}) carries no transfer metadata: it was "
            "not written by `transfer export` (or by an older version). "
            f"Export it again with `transfer export`. Received: path={path!r}"
        )
    return json.loads(raw)
