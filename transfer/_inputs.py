"""The input kinds `fit` takes, in one place: tf.data, PyDataset, arrays.

Batch sizes, steps per epoch, iteration over `(x, y)` batches and the
`model.fit` keyword arguments for each kind (Keras keeps the same in
`keras/src/trainers/data_adapters/`).
"""

import numpy as np


def is_tf_dataset(data):
    """Whether `data` is a `tf.data.Dataset` (False without TensorFlow).

    Example:

    >>> is_tf_dataset((np.zeros((2, 3)), np.zeros(2)))
    False
    """
    try:
        import tensorflow as tf  # optional: every input kind works without it
    except ImportError:
        return False
    return isinstance(data, tf.data.Dataset)


def data_batch_size(data, batch_size):
    """The batch size `fit` sees: `batch_size` for arrays, else the data's.

    Example:

    >>> data_batch_size((np.zeros((10, 3)), np.zeros(10)), 4)
    4
    """
    if isinstance(data, tuple):
        return int(batch_size)
    spec = getattr(data, "element_spec", None)
    if spec is not None:
        first = spec[0] if isinstance(spec, tuple) else spec
        size = first.shape[0] if first.shape.rank else None
        if size is not None:
            return int(size)
    return int(batch_size)


def iterate_batches(data, batch_size=32):
    """Yields `(images, labels)` NumPy batches of an evaluation set.

    Args:
        data: an `(x, y)` tuple of arrays, a `keras.utils.PyDataset`, a
            finite `tf.data.Dataset` or any iterable of `(x, y)` batches.
        batch_size: batch size for array data. Defaults to `32`.

    Raises:
        ValueError: the data is infinite or has no labels.
    """
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        for start in range(0, num_samples(x), batch_size):
            part = slice(start, start + batch_size)
            yield _as_numpy(
                tuple(p[part] for p in x) if is_text_pairs(x) else x[part]
            ), np.asarray(y[part])
        return
    cardinality = getattr(data, "cardinality", None)
    if cardinality is not None and int(cardinality()) == -1:
        raise ValueError(
            "Evaluation data must be finite, but this tf.data.Dataset repeats "
            "forever. Pass it without .repeat(), or .take(n) batches. "
            f"Received: {data!r}"
        )
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        batches = (data[i] for i in range(len(data)))
    else:
        batches = iter(data)
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                "Evaluation data must yield (images, labels) batches. "
                f"Received: a batch of type {type(batch).__name__}"
            )
        yield _as_numpy(batch[0]), np.asarray(batch[1])


def _as_numpy(x):
    """A batch's inputs as NumPy; a sentence-pair tuple stays a tuple."""
    if isinstance(x, tuple):
        return tuple(np.asarray(part) for part in x)
    return np.asarray(x)


def num_samples(x):
    """How many samples `x` holds: its length, or a pair's first part's."""
    return len(x[0]) if is_text_pairs(x) else len(x)


def first_batch_size(data, batch_size):
    """The batch size to train the head with: the data's own for batched
    datasets, `batch_size` for arrays."""
    if isinstance(data, tuple):
        return batch_size
    for images, _ in iterate_batches(data, batch_size):
        return len(images)
    return batch_size


def _text_dataset(items, batch_size, shuffle):
    """Strings (and labels) as a shuffled, batched `tf.data.Dataset`.

    KerasHub tasks run their tokenizer in `tf.data`; giving them a dataset
    that reshuffles every epoch keeps `shuffle` meaningful.
    """
    import tensorflow as tf  # KerasHub text tasks tokenize in tf.data

    ds = tf.data.Dataset.from_tensor_slices(items)
    if shuffle:
        count = num_samples(items[0]) if isinstance(items, tuple) else len(items)
        ds = ds.shuffle(count, reshuffle_each_iteration=True)
    return ds.batch(batch_size)


def is_text(x):
    return len(x) > 0 and isinstance(x[0], str)


def is_text_pairs(x):
    """Whether `x` is a sentence-pair input: `(first_texts, second_texts)`.

    Example:

    >>> is_text_pairs((["a cat"], ["an animal"])), is_text_pairs(["a", "b"])
    (True, False)
    """
    return (
        isinstance(x, tuple) and len(x) == 2
        and all(isinstance(p, (list, np.ndarray)) and is_text(p) for p in x)
    )


def is_text_input(x):
    """Whether `x` is raw text: strings, or sentence pairs of them."""
    return is_text_pairs(x) or (
        isinstance(x, (list, np.ndarray)) and is_text(x)
    )


def fit_kwargs(data, batch_size, shuffle):
    if isinstance(data, (list, np.ndarray)):  # unlabelled (e.g. masked LM)
        if is_text(data):
            return {"x": _text_dataset(list(data), batch_size, shuffle), "shuffle": False}
        return {"x": data, "batch_size": batch_size, "shuffle": shuffle}
    if isinstance(data, tuple) and len(data) == 2 and is_text_pairs(data[0]):
        (first, second), labels = data
        if not len(first) == len(second) == len(labels):
            raise ValueError(
                "Sentence pairs and labels differ in length: "
                f"{len(first)} first texts, {len(second)} second texts, "
                f"{len(labels)} labels. Pass ((first, second), labels) of "
                "one length."
            )
        items = ((list(first), list(second)), np.asarray(labels))
        return {"x": _text_dataset(items, batch_size, shuffle), "shuffle": False}
    if isinstance(data, tuple) and len(data) == 2 and is_text(data[0]):
        if len(data[0]) != len(data[1]):
            raise ValueError(
                f"x and y differ in length: {len(data[0])} texts, "
                f"{len(data[1])} labels."
            )
        items = (list(data[0]), np.asarray(data[1]))
        return {"x": _text_dataset(items, batch_size, shuffle), "shuffle": False}
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(
                "Array data is an (x, y) tuple. "
                f"Received: a tuple of length {len(data)}"
            )
        x, y = data
        if len(x) != len(y):
            raise ValueError(
                f"x and y differ in length: {len(x)} images, {len(y)} labels."
            )
        return {"x": x, "y": y, "batch_size": batch_size, "shuffle": shuffle}
    return {"x": data, "shuffle": False}  # datasets shuffle themselves


def steps_per_epoch(data, batch_size):
    if isinstance(data, (list, np.ndarray)):
        return int(np.ceil(len(data) / batch_size))
    if isinstance(data, tuple):
        return int(np.ceil(num_samples(data[0]) / batch_size))
    if is_tf_dataset(data):
        count = int(data.cardinality())
        return count if count > 0 else None
    try:
        return len(data)
    except TypeError:
        return None
