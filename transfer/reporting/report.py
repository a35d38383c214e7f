"""A report for people who don't open TensorBoard: PNGs and metrics.json.

`write_report` writes `training_curves.png`, `confusion_matrix.png` and
`metrics.json` (per-class precision, recall and F1, computed as
scikit-learn does). Evaluation goes through the data once, batch by batch
(`transfer.reporting.streaming.StreamingEvaluation`), so its memory does
not grow with the data. The evaluation helpers here also feed the image
callbacks in `transfer.tensorboard.callbacks`.
"""

import logging
import os

import keras
import numpy as np

from transfer import _backend
from transfer import _inputs
from transfer import _model_info
from transfer._io import write_json
from transfer.reporting import plots
from transfer.reporting.streaming import StreamingEvaluation
from transfer.reporting.streaming import TopLosses  # noqa: F401 (public here)
from transfer.reporting.streaming import as_probabilities

logger = logging.getLogger(__name__)


def predict_batches(model, data, batch_size=32):
    """Yields `(images, labels, probabilities)` NumPy batches.

    Labels may be class indices or one-hot rows; they come out as indices.
    Model outputs that are logits are turned into probabilities, divided
    by the model's temperature when it records one (`transfer.calibration`),
    as `transfer predict` gives them.
    """
    temperature = _model_info.temperature(model)
    for images, labels in _inputs.iterate_batches(data, batch_size):
        if labels.ndim == 2 and labels.shape[-1] > 1:
            labels = labels.argmax(-1)
        outputs = np.asarray(_backend.predict_on_batch(model, images),
                             dtype="float64")
        if temperature != 1.0:
            if not _model_info.is_logits(model):  # log-probabilities
                outputs = np.log(np.clip(outputs, 1e-12, None))
            outputs = outputs / temperature
        yield images, labels.reshape(-1).astype("int64"), as_probabilities(
            outputs
        )


def first_images(data, max_images):
    """Up to `max_images` images of the first batch `data` yields.

    For an `(x, y)` tuple of arrays: the first `max_images` of `x`.
    """
    if isinstance(data, tuple) and len(data) == 2:
        return np.asarray(data[0][:max_images])
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        batch = data[0]
    else:
        batch = next(iter(data))
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    return np.asarray(images)[:max_images]


def top_losses(model, data, num_images, batch_size=32):
    """The `num_images` examples with the highest cross-entropy, worst first.

    Keeps only those examples in memory while it goes through `data`.

    Returns:
        A `TopLosses` of NumPy arrays `(images, labels, probabilities,
        losses, indices)`, `indices` being each example's position in
        `data` (as `file_paths[i]` of data read in a fixed order names its
        file), or `None` when `data` is empty.
    """
    return evaluate_data(
        model, data, max_examples=num_images, batch_size=batch_size
    ).worst()


def class_names_for(model, class_names):
    """`class_names` checked against the model's outputs, or `"0"`, `"1"`..."""
    num_classes = int(model.output_shape[-1])
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    class_names = [str(n) for n in class_names]
    if len(class_names) != num_classes:
        raise ValueError(
            f"The model has {num_classes} outputs but {len(class_names)} "
            f"class names were given. Received: class_names={class_names}"
        )
    return class_names


def evaluate_data(model, data, class_names=None, *, max_examples=0,
                  batch_size=32, verbose=0):
    """Goes through `data` once, batch by batch: a `StreamingEvaluation`.

    Memory holds a few batches and the `max_examples` worst examples, not
    the data: pass a `tf.data.Dataset` (such as `load_image_folder`'s) to
    evaluate a folder of any size. When `data` has `directory` and
    `file_paths` (one file per example, relative to `directory`, in the
    order it yields them, as `transfer.evaluation_data.labelled_dataset` gives
    them), the worst examples keep their files.

    Args:
        model: the classifier.
        data: labelled data, as `transfer._inputs.iterate_batches` takes
            it: `(x, y)` arrays, a `keras.utils.PyDataset`, a finite
            `tf.data.Dataset` or an iterable of batches.
        class_names: class names. Defaults to `None` (`"0"`, `"1"`, ...).
        max_examples: how many worst examples to keep. Defaults to `0`.
        batch_size: batch size for array data. Defaults to `32`.
        verbose: `1` shows a `keras.utils.Progbar` (on stdout, which the
            command line points at stderr). Defaults to `0`.

    Returns:
        The `StreamingEvaluation`, having seen every example: call
        `result()` for the metrics, `worst()` for the worst examples.
    """
    evaluation = StreamingEvaluation(
        class_names_for(model, class_names), max_examples=max_examples
    )
    # Files only from data that names its folder (`LabelledDataset`,
    # `LabelledData`): a shuffled training set's `file_paths` are not in
    # the order it yields.
    file_paths = None
    if getattr(data, "directory", None) is not None:
        file_paths = getattr(data, "file_paths", None)
    total = len(file_paths) if file_paths is not None else None
    if total is None and isinstance(data, tuple) and len(data) == 2:
        total = _inputs.num_samples(data[0])
    progress = keras.utils.Progbar(total, verbose=verbose,
                                   unit_name="example")
    for images, labels, probabilities in predict_batches(
        model, data, batch_size
    ):
        start = evaluation.num_examples
        paths = None
        if file_paths is not None:
            paths = file_paths[start : start + len(labels)]
        if isinstance(images, tuple):  # sentence pairs, shown as one text
            images = np.asarray([" || ".join(
                t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                for t in pair) for pair in zip(*images, strict=True)],
                dtype=object)
        evaluation.update(labels, probabilities, images, paths)
        progress.update(evaluation.num_examples)
    if verbose:
        progress.update(evaluation.num_examples, finalize=True)
    return evaluation


def evaluate_classes(model, data, class_names=None, batch_size=32):
    """Per-class precision, recall and F1 plus the confusion matrix.

    One pass over `data` (see `evaluate_data`); the numbers are
    scikit-learn's `precision_recall_fscore_support` (`zero_division=0`).

    Returns:
        A JSON-ready dict: `num_examples`, `accuracy`, `per_class`
        (`precision`, `recall`, `f1`, `support` per class name),
        `macro_avg`, `weighted_avg`, `class_names`, `confusion_matrix` and
        `loss`, the mean cross-entropy.
    """
    return evaluate_data(
        model, data, class_names, batch_size=batch_size
    ).result()


def write_report(
    report_dir,
    histories=None,
    *,
    stage_names=None,
    model=None,
    data=None,
    class_names=None,
    split="validation",
    evaluation=None,
):
    """Writes PNG curves, a confusion-matrix PNG and `metrics.json`.

    `fit_recipe` calls it with the validation data, into `run_dir/report`.
    Call it yourself with test data after training (it overwrites).

    Args:
        report_dir: output directory, created if needed.
        histories: `keras.callbacks.History` objects, one per stage, for
            `training_curves.png`; `None` for no curves. Defaults to `None`.
        stage_names: names of the stages, to label the curves.
            Defaults to `None`.
        model: the trained classifier, to evaluate on `data`.
            Defaults to `None`.
        data: labelled evaluation data (as `iterate_batches` takes), or
            `None` for no confusion matrix or per-class metrics.
            Defaults to `None`.
        class_names: class names. Defaults to `None` (`"0"`, `"1"`, ...).
        split: what `data` is, recorded in `metrics.json`.
            Defaults to `"validation"`.
        evaluation: a `StreamingEvaluation` that has already seen `data`
            (from `evaluate_data`), written instead of evaluating `model`
            on `data` again. Defaults to `None`.

    Returns:
        The dict written to `metrics.json`.

    Example:

    >>> import os
    >>> x, y = transfer.synthetic_images(16, 32, 2)
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> metrics = transfer.write_report(
    ...     "report", model=model, data=(x, y), class_names=["cat", "dog"])
    >>> sorted(metrics["per_class"]), metrics["num_examples"]
    (['cat', 'dog'], 16)
    >>> sorted(os.listdir("report"))
    ['confusion_matrix.png', 'metrics.json']
    """
    plots.require_matplotlib()
    os.makedirs(report_dir, exist_ok=True)
    metrics = {"split": None}
    if histories:
        figure = plots.training_curves_figure(histories, stage_names)
        figure.savefig(os.path.join(report_dir, "training_curves.png"))
        metrics["final_epoch"] = {
            key: float(values[-1])
            for key, values in histories[-1].history.items()
            if values
        }
    if evaluation is None and model is not None and data is not None:
        evaluation = evaluate_data(model, data, class_names)
    if evaluation is not None:
        evaluation = evaluation.result()
        metrics["split"] = split
        metrics.update(evaluation)
        accuracy = evaluation["accuracy"] or 0.0
        figure = plots.confusion_matrix_figure(
            np.asarray(evaluation["confusion_matrix"]),
            evaluation["class_names"],
            title=f"Confusion matrix ({split})\naccuracy {accuracy:.3f}",
        )
        figure.savefig(os.path.join(report_dir, "confusion_matrix.png"))
    else:
        logger.info(
            "No evaluation data: %s has curves only, no per-class metrics.",
            report_dir,
        )
    write_json(os.path.join(report_dir, "metrics.json"), metrics)
    return metrics
