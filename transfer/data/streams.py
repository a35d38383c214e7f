"""Files read batch by batch, for evaluation and prediction.

`read_batches` decodes files in a thread pool a few batches ahead of the
caller (prediction: `transfer.prediction.iter_predictions`), and
`LabelledDataset` streams a labelled folder through `tf.data` in a fixed
order, naming each example's file (evaluation:
`transfer.evaluation_data.labelled_dataset`). Either holds a few batches in
memory, whatever the number of files, and names a file that cannot be
read when the stream reaches it.
"""

import collections
import concurrent.futures
import itertools
import os

import keras

from transfer.backbones.spec import check_interpolation
from transfer.data import image_files


def read_input(path, modality, image_size, interpolation="bilinear"):
    """`(input, None)` for a readable file, `(None, reason)` otherwise.

    Images are read as `image_files.read_image` reads them (as training
    sees them, resized to `image_size` with `interpolation`), `.txt` files
    as UTF-8 text.

    Example:

    >>> with open("notes.txt", "w") as f:
    ...     _ = f.write("hello")
    >>> read_input("notes.txt", "text", None)
    ('hello', None)
    >>> read_input("notes.txt", "image", 32)[1]
    'not an image Pillow can identify'
    """
    try:
        if modality == "text":
            with open(path, encoding="utf-8") as f:
                return f.read(), None
        # Converted as training converts it (16-bit scaled, not clipped),
        # resized as Keras resizes training images.
        return image_files.read_image(
            path, image_size, interpolation=interpolation), None
    except Exception as e:  # noqa: BLE001 (every reason names the file)
        # `read_image` says why in words (ValueError); others by type.
        return None, (str(e) if isinstance(e, ValueError)
                      else f"{type(e).__name__}: {e}")


def read_batches(files, modality, image_size, batch_size,
                 interpolation="bilinear"):
    """Yields `(paths, [(input, reason), ...])`, one batch at a time.

    `reason` is `None` for a file read, else why it was not
    (`read_input`). Images are resized with `interpolation` (checked
    first: an unknown one raises `ValueError` before any file is read).

    Files are decoded in a thread pool (Pillow and TensorFlow's resize
    release the GIL), the next two batches while the caller predicts the
    current one: memory holds three batches, whatever the number of files.
    """
    check_interpolation(interpolation)
    workers = max(1, min(8, os.cpu_count() or 1))
    starts = iter(range(0, len(files), batch_size))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:

        def submit(start):
            paths = files[start : start + batch_size]
            return paths, [pool.submit(read_input, path, modality,
                                       image_size, interpolation)
                           for path in paths]

        pending = collections.deque(
            submit(start) for start in itertools.islice(starts, 2)
        )
        while pending:
            paths, futures = pending.popleft()
            results = [future.result() for future in futures]
            following = next(starts, None)
            if following is not None:
                pending.append(submit(following))
            yield paths, results


class LabelledDataset:
    """Labelled images streamed from a folder, in a fixed order.

    What `transfer.evaluation_data.labelled_dataset` returns for image runs:
    iterating it yields `(images, labels)` batches of its `dataset` (a
    `tf.data.Dataset` that decodes in parallel and prefetches), with
    `file_paths[i]` naming the file of the `i`-th example. Pass it wherever labelled data is taken
    (`transfer.write_report`, `transfer.run_report.write_run_report`);
    `model.evaluate(data.dataset)` takes its dataset.

    A file that cannot be decoded when the stream reaches it (deleted or
    changed since the preflight checked it) stops the iteration with a
    `ValueError` naming it.

    Args:
        dataset: the batched `tf.data.Dataset` of `(images, labels)`.
        directory: the data folder.
        file_paths: one path per example, relative to `directory`, in the
            order `dataset` yields them.
        class_names: the class names.
        verbose: `1` shows a `keras.utils.Progbar` while iterating.
            Defaults to `0`.
    """

    def __init__(self, dataset, directory, file_paths, class_names,
                 verbose=0):
        self.dataset = dataset
        self.directory = directory
        self.file_paths = file_paths
        self.class_names = class_names
        self.verbose = verbose

    def __len__(self):
        """The number of batches."""
        return int(self.dataset.cardinality())

    def __iter__(self):
        import tensorflow as tf  # optional heavy dependency: tf.data errors

        progress = keras.utils.Progbar(
            len(self.file_paths), verbose=self.verbose, unit_name="image")
        seen = 0
        iterator = iter(self.dataset)
        while True:
            try:
                images, labels = next(iterator)
            except StopIteration:
                break
            except tf.errors.OpError as e:
                raise self._read_error(seen, e) from None
            seen += int(labels.shape[0])
            progress.update(seen)
            yield images, labels

    def _read_error(self, seen, error):
        """The error for a batch that failed to decode after `seen`."""
        batch = self.file_paths[seen : seen + _batch_size(self.dataset)]
        for name in batch:
            _, reason = read_input(
                os.path.join(self.directory, name), "image", None)
            if reason is not None:
                return ValueError(
                    f"Cannot read '{os.path.join(self.directory, name)}' as "
                    f"an image ({reason}): it changed after the preflight "
                    f"checked the folder. Restore or remove it, and run "
                    f"again. Received: file={name!r}"
                )
        first = os.path.join(self.directory, batch[0]) if batch else "?"
        return ValueError(
            f"Cannot read the images from '{first}' on in "
            f"'{self.directory}' ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:300]}). A file changed after "
            "the preflight checked the folder: check them and run again. "
            f"Received: data={self.directory!r}"
        )


def _batch_size(dataset):
    spec = dataset.element_spec[0]
    return int(spec.shape[0] or 32)
