"""TensorBoard callbacks that `fit_recipe` adds to every stage, usable in any `fit`.

`EpochTensorBoard` (`keras.callbacks.TensorBoard` without its
`evaluation_*_vs_iterations` curves) writes the per-epoch loss, metrics and
learning rate into `log_dir/train` and `log_dir/validation`. The callbacks
here add the rest, each into its own run directory beside those two
(TensorBoard follows only the newest event file of a directory, so two
open writers must not share one): `StageLogger` -> `stage`,
`InputImagesLogger` -> `train_images`, `ConfusionMatrixLogger` and
`TopLossesLogger` -> `validation_images`, `HParamsLogger` -> `log_dir`.
Steps are epochs as Keras counts them (from 0), so they continue across
`fit` calls that pass `initial_epoch`; titles drawn into images count
epochs from 1, as Keras's progress bar does. Give every callback the
`log_dir` you give the TensorBoard callback (an example is in
`transfer.callbacks`, the public namespace).
"""

import os

import keras
import numpy as np

from transfer.reporting import plots
from transfer.reporting import report
from transfer.tensorboard import summaries


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` with every curve on the epoch axis.

    Keras's callback also writes, after each validation, the validation
    metrics as `evaluation_<metric>_vs_iterations` stepped by the
    optimizer's iteration count. A fresh optimizer per stage (each
    `fit_recipe` stage, or any run of several `fit` calls that recompile)
    restarts that count, so those curves fold back at every stage and a
    multi-stage run looks shorter than a one-stage run on the same chart.
    This callback leaves them out; `epoch_*` curves, which continue across
    `fit` calls that pass `initial_epoch`, are unchanged. It takes the
    arguments of `keras.callbacks.TensorBoard`.

    Example:

    >>> callback = transfer.callbacks.EpochTensorBoard("logs")
    """

    def on_test_end(self, logs=None):
        # Keras writes `evaluation_*_vs_iterations` from `logs` here, then
        # restores its batch-level writer: keep the second part only.
        super().on_test_end({})


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )


class StageLogger(keras.callbacks.Callback):
    """Logs a stage: its number, trainable parameters, freeze plan, summary.

    Writes into `log_dir/stage`, per epoch: scalars `stage` (the stage
    number, so stage boundaries show as steps) and `trainable_params`; at
    the first epoch of each `fit`: text `stage_summary` (name, epochs,
    learning rate, trainable blocks), `freeze_plan` (blocks, layers and
    parameters) and `model_summary`.

    Args:
        log_dir: the TensorBoard log directory. Defaults to `"logs"`.
        stage: the `transfer.Stage` being trained, or `None` for a plain
            `fit`. Defaults to `None`.
        stage_number: the stage's number, from 1. Defaults to `1`.
        freeze_plan: the `transfer.FreezePlan` that `set_trainable_blocks`
            returned, or `None` to list the model's top-level layers.
            Defaults to `None`.

    Example:

    >>> import os
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> plan = transfer.set_trainable_blocks(model, 1)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True), metrics=["accuracy"])
    >>> x, y = transfer.synthetic_images(16, 32, 2)
    >>> logger = transfer.callbacks.StageLogger("logs", freeze_plan=plan)
    >>> _ = model.fit(x, y, epochs=1, callbacks=[logger], verbose=0)
    >>> os.listdir("logs")
    ['stage']
    """

    def __init__(self, log_dir="logs", stage=None, stage_number=1,
                 freeze_plan=None):
        super().__init__()
        _positive_int("stage_number", stage_number)
        self.log_dir = log_dir
        self.stage = stage
        self.stage_number = stage_number
        self.freeze_plan = freeze_plan

    def on_train_begin(self, logs=None):
        summaries.check_log_dir(self.log_dir)
        self._writer = summaries.EventWriter(
            os.path.join(self.log_dir, "stage")
        )
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._started:
            return
        self._started = True
        end = self.params.get("epochs") if self.params else None
        self._writer.text(
            "stage_summary",
            summaries.stage_markdown(
                self.model, self.stage, self.stage_number, epoch, end
            ),
            epoch,
        )
        self._writer.text(
            "freeze_plan",
            summaries.freeze_plan_markdown(self.model, self.freeze_plan),
            epoch,
        )
        self._writer.text(
            "model_summary", summaries.model_summary_markdown(self.model), epoch
        )

    def on_epoch_end(self, epoch, logs=None):
        self._writer.scalar(
            "stage", self.stage_number, epoch,
            description="Stage number; a step up marks a new stage.",
        )
        self._writer.scalar(
            "trainable_params",
            summaries.count_params(self.model.trainable_weights),
            epoch,
        )
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._writer.close()


class InputImagesLogger(keras.callbacks.Callback):
    """Logs a grid of the first training batch, as the model receives it.

    With a `tf.data` pipeline that augments (as `transfer.make_dataset(...,
    augment=...)` does), the grid shows augmented images. Written once per
    `fit`, at its first epoch, as image `training_inputs` in
    `log_dir/train_images`. Taking the batch iterates the data once more.

    Args:
        train_data: the training data given to `fit`: an `(x, y)` tuple, a
            `tf.data.Dataset`, a `keras.utils.PyDataset` or an iterable of
            batches.
        log_dir: the TensorBoard log directory. Defaults to `"logs"`.
        max_images: most images in the grid. Defaults to `16`.

    Example:

    >>> import os
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True), metrics=["accuracy"])
    >>> x, y = transfer.synthetic_images(16, 32, 2)
    >>> logger = transfer.callbacks.InputImagesLogger((x, y), "logs", 8)
    >>> _ = model.fit(x, y, epochs=1, callbacks=[logger], verbose=0)
    >>> os.listdir("logs")
    ['train_images']
    """

    def __init__(self, train_data, log_dir="logs", max_images=16):
        super().__init__()
        _positive_int("max_images", max_images)
        self.train_data = train_data
        self.log_dir = log_dir
        self.max_images = max_images

    def on_train_begin(self, logs=None):
        summaries.check_log_dir(self.log_dir)
        self._written = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._written:
            return
        self._written = True
        images = report.first_images(self.train_data, self.max_images)
        writer = summaries.EventWriter(
            os.path.join(self.log_dir, "train_images")
        )
        writer.image(
            "training_inputs", plots.image_grid(images), epoch,
            description=f"First training batch ({len(images)} images).",
        )
        writer.close()


class ConfusionMatrixLogger(keras.callbacks.Callback):
    """Logs the confusion matrix on validation data after every epoch.

    Image `confusion_matrix` in `log_dir/validation_images`: rows are true
    classes, columns predictions, labelled with `class_names`. Its step is
    Keras's epoch (from 0, like the scalars); its title counts epochs from
    1, as Keras's progress bar does. Needs matplotlib.

    Args:
        validation_data: labelled data: an `(x, y)` tuple, a finite
            `tf.data.Dataset`, a `keras.utils.PyDataset` or an iterable of
            `(images, labels)` batches.
        class_names: the class names, one per model output, or `None` for
            `"0"`, `"1"`, ... Defaults to `None`.
        log_dir: the TensorBoard log directory. Defaults to `"logs"`.
        batch_size: batch size for array data. Defaults to `32`.

    Example:

    >>> import os
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True), metrics=["accuracy"])
    >>> x, y = transfer.synthetic_images(16, 32, 2)
    >>> logger = transfer.callbacks.ConfusionMatrixLogger(
    ...     (x, y), ["cat", "dog"], "logs")
    >>> _ = model.fit(x, y, epochs=1, callbacks=[logger], verbose=0)
    >>> os.listdir("logs")
    ['validation_images']
    """

    def __init__(self, validation_data, class_names=None, log_dir="logs",
                 batch_size=32):
        super().__init__()
        plots.require_matplotlib()
        _positive_int("batch_size", batch_size)
        self.validation_data = validation_data
        self.class_names = class_names
        self.log_dir = log_dir
        self.batch_size = batch_size

    def on_train_begin(self, logs=None):
        self._names = report.class_names_for(self.model, self.class_names)
        summaries.check_log_dir(self.log_dir)
        self._writer = summaries.EventWriter(
            os.path.join(self.log_dir, "validation_images")
        )

    def on_epoch_end(self, epoch, logs=None):
        n = len(self._names)
        matrix = np.zeros((n, n), dtype="int64")
        batches = report.predict_batches(
            self.model, self.validation_data, self.batch_size
        )
        for _, labels, probabilities in batches:
            np.add.at(matrix, (labels, probabilities.argmax(-1)), 1)
        accuracy = np.trace(matrix) / max(matrix.sum(), 1)
        # Titles count epochs from 1, as Keras's progress bar does; the
        # TensorBoard step stays Keras's 0-based `epoch`.
        figure = plots.confusion_matrix_figure(
            matrix, self._names,
            title=f"Epoch {epoch + 1}: accuracy {accuracy:.3f}",
        )
        self._writer.image(
            "confusion_matrix", plots.figure_to_array(figure), epoch,
            description="Validation data; rows: true, columns: predicted.",
        )
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._writer.close()


class TopLossesLogger(keras.callbacks.Callback):
    """Logs the worst-classified validation examples when `fit` ends.

    Image `top_losses` in `log_dir/validation_images`, at the last epoch of
    the `fit` (so at the end of each `fit_recipe` stage): the `num_images`
    examples with the highest cross-entropy, each titled `true / predicted
    (p = probability of the predicted class)` and its loss, under a title
    naming the epoch as Keras's progress bar counts it (from 1). Only those examples are kept in memory. Needs
    matplotlib.

    Args:
        validation_data: labelled data, as `ConfusionMatrixLogger` takes it.
        class_names: the class names, or `None` for `"0"`, `"1"`, ...
            Defaults to `None`.
        log_dir: the TensorBoard log directory. Defaults to `"logs"`.
        num_images: how many examples to show. Defaults to `16`.
        batch_size: batch size for array data. Defaults to `32`.

    Example:

    >>> import os
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True), metrics=["accuracy"])
    >>> x, y = transfer.synthetic_images(16, 32, 2)
    >>> logger = transfer.callbacks.TopLossesLogger(
    ...     (x, y), ["cat", "dog"], "logs", num_images=4)
    >>> _ = model.fit(x, y, epochs=1, callbacks=[logger], verbose=0)
    >>> os.listdir("logs")
    ['validation_images']
    """

    def __init__(self, validation_data, class_names=None, log_dir="logs",
                 num_images=16, batch_size=32):
        super().__init__()
        plots.require_matplotlib()
        _positive_int("num_images", num_images)
        _positive_int("batch_size", batch_size)
        self.validation_data = validation_data
        self.class_names = class_names
        self.log_dir = log_dir
        self.num_images = num_images
        self.batch_size = batch_size

    def on_train_begin(self, logs=None):
        self._names = report.class_names_for(self.model, self.class_names)
        summaries.check_log_dir(self.log_dir)
        self._last_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch

    def on_train_end(self, logs=None):
        if self._last_epoch is None:
            return
        worst = report.top_losses(
            self.model, self.validation_data, self.num_images, self.batch_size
        )
        if worst is None:
            return
        figure = plots.top_losses_figure(
            worst.images, worst.labels, worst.probabilities, worst.losses,
            self._names,
            title=f"Top losses after epoch {self._last_epoch + 1}, highest "
            f"first: {plots.TILE_LEGEND}",
        )
        writer = summaries.EventWriter(
            os.path.join(self.log_dir, "validation_images")
        )
        writer.image(
            "top_losses", plots.figure_to_array(figure), self._last_epoch,
            description=f"The {len(worst.images)} validation examples with "
            "the highest loss, worst first.",
        )
        writer.close()


class HParamsLogger(keras.callbacks.Callback):
    """Records a run's hyperparameters for TensorBoard's HParams dashboard.

    Writes one HParams session into `log_dir` itself when training starts;
    the dashboard shows it against the last value of every scalar in the
    run directories under `log_dir` (such as `epoch_accuracy` of
    `validation`). Start TensorBoard on the folder that holds the runs
    (`tensorboard --logdir runs` for `runs/a/logs`, `runs/b/logs`): the
    dashboard only pairs metrics with a session below the `--logdir` root,
    and that is how runs compare, one row each.

    Args:
        hparams: a dict of name to `bool`, `int`, `float` or `str` value.
        log_dir: the TensorBoard log directory. Defaults to `"logs"`.
        trial_id: the HParams group name; runs with the same one are shown
            as repeats of one trial. Defaults to `None` (a hash of
            `hparams`); `fit_recipe` passes its run directory's name, one
            row per run (give runs in different folders different names).

    Example:

    >>> import os
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True), metrics=["accuracy"])
    >>> x, y = transfer.synthetic_images(16, 32, 2)
    >>> logger = transfer.callbacks.HParamsLogger(
    ...     {"learning_rate": 1e-3, "backbone": "small_cnn"}, "logs")
    >>> _ = model.fit(x, y, epochs=1, callbacks=[logger], verbose=0)
    >>> [name.startswith("events.out.tfevents.")
    ...  for name in os.listdir("logs")]
    [True]
    """

    def __init__(self, hparams, log_dir="logs", trial_id=None):
        super().__init__()
        summaries.check_hparams(hparams)
        self.hparams = hparams
        self.log_dir = log_dir
        self.trial_id = trial_id

    def on_train_begin(self, logs=None):
        summaries.check_log_dir(self.log_dir)
        writer = summaries.EventWriter(self.log_dir)
        writer.hparams(self.hparams, trial_id=self.trial_id)
        writer.close()
