"""Label-range checks for every kind of data `fit_recipe` takes.

Keras does not check class indices against the number of outputs: the
TensorFlow backend fails deep inside the loss, torch with an index error,
and JAX trains on an out-of-range label silently. `check_labels` makes a
label outside `[0, num_classes)` a `ValueError` on every backend:

- arrays: every label is checked before training;
- `tf.data.Dataset`: the first batch is checked before training, and the
  dataset is wrapped (`Dataset.map` with `tf.debugging.Assert`, which costs
  next to nothing) so that a bad label in a later batch stops training;
  `fit_recipe` turns that TensorFlow error into `LabelRangeError`;
- `keras.utils.PyDataset`: the first batch up front, then every batch as
  the wrapper `CheckedPyDataset` hands it to Keras.

Other iterables pass unchecked. One-hot labels (last axis of size
`num_classes`) are not class indices and are left alone.
"""

import keras
import numpy as np

from transfer import _inputs

_MARKER = "transfer-label-check"


class LabelRangeError(ValueError):
    """A class index outside `[0, num_classes)`."""


def _message(what, num_classes, count, first, low, high):
    return (
        f"{what} labels must be in [0, {num_classes}) for a {num_classes}-"
        f"class model; {count} are not (first: {first!r}). Class indices "
        "start at 0: fix the labels, or build the model with more classes. "
        f"Received: labels in [{low}, {high}]"
    )


def _is_index_labels(labels, num_classes):
    shape = np.shape(labels)
    return not (len(shape) >= 2 and shape[-1] == num_classes and num_classes > 1)


def check_label_array(labels, num_classes, what):
    """Raises `LabelRangeError` unless every label is in range."""
    labels = np.asarray(labels)
    if labels.size == 0 or not _is_index_labels(labels, num_classes):
        return
    if not np.issubdtype(labels.dtype, np.number):
        return
    bad = (labels < 0) | (labels >= num_classes)
    if np.any(bad):
        raise LabelRangeError(
            _message(what, num_classes, int(bad.sum()), labels[bad][0].item(),
                     labels.min().item(), labels.max().item())
        )


def _batch_labels(batch):
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        labels = batch[1]
        if isinstance(labels, dict):
            return None
        return keras.ops.convert_to_numpy(labels)
    return None


class CheckedPyDataset(keras.utils.PyDataset):
    """A `keras.utils.PyDataset` whose batches' labels are range-checked.

    Args:
        dataset: the `PyDataset` to wrap; its workers, multiprocessing and
            queue settings carry over.
        num_classes: the number of model outputs.
        what: `"Training"` or `"Validation"`, for the message.
    """

    def __init__(self, dataset, num_classes, what):
        super().__init__(
            workers=dataset.workers,
            use_multiprocessing=dataset.use_multiprocessing,
            max_queue_size=dataset.max_queue_size,
        )
        self.dataset = dataset
        self.num_classes = num_classes
        self.what = what

    def __len__(self):
        return len(self.dataset)

    @property
    def num_batches(self):
        return self.dataset.num_batches

    def __getitem__(self, index):
        batch = self.dataset[index]
        labels = _batch_labels(batch)
        if labels is not None:
            check_label_array(labels, self.num_classes, self.what)
        return batch

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


def _checked_tf_dataset(dataset, num_classes, what):
    import tensorflow as tf

    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        return dataset
    label_spec = spec[1]
    if not isinstance(label_spec, tf.TensorSpec) or not (
        label_spec.dtype.is_integer or label_spec.dtype.is_floating
    ):
        return dataset
    shape = label_spec.shape
    if shape.rank and shape.rank >= 2 and shape[-1] == num_classes:
        return dataset

    def check(*element):
        labels = element[1]
        ok = tf.logical_and(
            tf.reduce_all(labels >= 0),
            tf.reduce_all(labels < tf.cast(num_classes, labels.dtype)),
        )
        assertion = tf.debugging.Assert(
            ok,
            [f"{_MARKER}|{what}|{num_classes}|", tf.reduce_min(labels), "|",
             tf.reduce_max(labels)],
        )
        with tf.control_dependencies([assertion]):
            labels = tf.identity(labels)
        return (element[0], labels, *element[2:])

    return dataset.map(check)


def check_labels(data, num_classes, what):
    """Checks class indices of `data`; returns it, wrapped where needed.

    Args:
        data: an `(x, y)` tuple, a `tf.data.Dataset`, a
            `keras.utils.PyDataset` or anything else `fit` takes.
        num_classes: the number of model outputs.
        what: `"Training"` or `"Validation"`, for the message.

    Returns:
        `data` itself, or a wrapper that checks every batch.

    Raises:
        LabelRangeError: a label (of the first batch, for datasets) is out of
            range.
    """
    if isinstance(data, tuple) and len(data) == 2:
        check_label_array(data[1], num_classes, what)
        return data
    if _inputs.is_tf_dataset(data):
        for batch in data.take(1):
            labels = _batch_labels(batch)
            if labels is not None:
                check_label_array(labels, num_classes, what)
        return _checked_tf_dataset(data, num_classes, what)
    if isinstance(data, keras.utils.PyDataset):
        if len(data):
            labels = _batch_labels(data[0])
            if labels is not None:
                check_label_array(labels, num_classes, what)
        return CheckedPyDataset(data, num_classes, what)
    return data


def raise_for_label_error(error):
    """Re-raises a TensorFlow assertion from `check_labels` as
    `LabelRangeError`; returns quietly for any other error."""
    text = str(error)
    if _MARKER not in text:
        return
    detail = text.split(_MARKER, 1)[1]
    parts = [p.strip(" []\n'\"") for p in detail.split("|")]
    what, num_classes = parts[1], parts[2]
    low = parts[3].split()[0] if len(parts) > 3 and parts[3] else "?"
    high = parts[4].split()[0] if len(parts) > 4 and parts[4] else "?"
    raise LabelRangeError(
        f"{what} labels must be in [0, {num_classes}) for a {num_classes}-"
        "class model, but a batch met during training holds labels outside "
        "it. Class indices start at 0: fix the labels, or build the model "
        f"with more classes. Received: a batch with labels in [{low}, {high}]"
    ) from error
