"""What a model is, read in one place: its task, its output, its backbone.

`transfer` models carry a `transfer_metadata` dict (set by the builders,
saved beside the model); the rest is read from the layers.
"""

import keras

TASKS = ("classification", "multilabel", "regression")


def metadata(model):
    """The model's `transfer_metadata` (an empty dict when it has none).

    Example:

    >>> metadata(keras.Sequential([keras.layers.Dense(2)]))
    {}
    """
    return getattr(model, "transfer_metadata", None) or {}


def interpolation(model):
    """How images are resized for `model`: the interpolation it was
    trained with, or `"bilinear"` for models that record none (runs made
    before it was recorded resized bilinearly).

    Example:

    >>> interpolation(keras.Sequential([keras.layers.Dense(2)]))
    'bilinear'
    """
    return metadata(model).get("interpolation") or "bilinear"


def temperature(model):
    """The temperature `transfer.calibration` fitted for `model` (its
    metadata's `calibration`), else `1.0`: prediction divides the logits
    by it.

    Example:

    >>> model = keras.Sequential([keras.layers.Dense(2)])
    >>> model.transfer_metadata = {"calibration": {"temperature": 1.5}}
    >>> temperature(model)
    1.5
    """
    record = metadata(model).get("calibration") or {}
    value = record.get("temperature") if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 < value < float("inf")
    ):
        return 1.0
    return float(value)


def model_task(model):
    """`"multilabel"`, `"regression"`, else `"classification"` (also for
    masked-LM models, which `fit_stages` handles apart)."""
    task = metadata(model).get("task")
    return task if task in TASKS else "classification"


def is_logits(model):
    """Whether the model's outputs are logits: recorded (an exported
    artifact's `output`), else its output layer has no activation."""
    recorded = metadata(model).get("output")
    if recorded in ("logits", "probabilities"):
        return recorded == "logits"
    activation = getattr(model.layers[-1], "activation", None)
    return activation is None or getattr(activation, "__name__", "") == "linear"


def is_self_supervised(model):
    """Whether `model` trains on unlabelled data (masked LM, SimCLR)."""
    return is_masked_lm(model) or getattr(model, "self_supervised", False)


def is_masked_lm(model):
    """Whether `model` is a KerasHub masked language model."""
    try:
        import keras_hub  # optional: only text models need it
    except ImportError:
        return False
    return isinstance(model, keras_hub.models.MaskedLM)


def find_backbone(model):
    """The nested backbone model inside a classifier built by `transfer`."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(
            "Expected a classifier from transfer.build_classifier(), with "
            f"exactly one nested backbone model; found {len(nested)} in "
            f"'{model.name}'. Received: model={model.name!r}"
        )
    return nested[0]
