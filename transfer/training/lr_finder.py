"""`find_learning_rate`: an exponential learning-rate sweep (fastai's
`lr_find`, Smith 2015), as plain `model.fit` calls."""

import dataclasses
import logging
import math
import os
from typing import Tuple

import keras
import numpy as np

from transfer import _inputs
from transfer.reporting import plots
from transfer.tensorboard import summaries
from transfer.training import stage_options

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LearningRateSweep:
    """What `find_learning_rate` measured.

    Attributes:
        learning_rates: the rate of each step, increasing exponentially.
        losses: the training loss of each step's batch.
        smoothed_losses: `losses` under an exponential moving average
            (beta 0.98, bias-corrected), as fastai plots them.
        suggestion: a rate to start from: the rate of the lowest smoothed
            loss divided by 10.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> sweep = transfer.find_learning_rate(
    ...     model, transfer.synthetic_images(32, 32, 2), num_steps=5,
    ...     batch_size=16)
    >>> isinstance(sweep, transfer.LearningRateSweep)
    True
    >>> sorted(sweep.to_dict())
    ['learning_rates', 'losses', 'smoothed_losses', 'suggestion']
    >>> [f"{rate:.0e}" for rate in sweep.learning_rates[:3]]  # up to 1.0
    ['1e-07', '6e-06', '3e-04']
    """

    learning_rates: Tuple[float, ...]
    losses: Tuple[float, ...]
    smoothed_losses: Tuple[float, ...]
    suggestion: float

    def to_dict(self):
        return dataclasses.asdict(self)


class _SweepRecorder(keras.callbacks.Callback):
    """Records each one-batch epoch's loss; stops once it diverges."""

    def __init__(self, learning_rates, diverge_factor=4.0):
        super().__init__()
        self.learning_rates = learning_rates
        self.diverge_factor = diverge_factor

    def on_train_begin(self, logs=None):
        self.losses = []
        self.smoothed = []
        self._average = 0.0

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", np.nan))
        self.losses.append(loss)
        if not math.isfinite(loss):
            self.model.stop_training = True
            return
        self._average = 0.98 * self._average + 0.02 * loss
        smoothed = self._average / (1 - 0.98 ** len(self.losses))
        self.smoothed.append(smoothed)
        if len(self.smoothed) > 1 and (
            smoothed > self.diverge_factor * min(self.smoothed)
        ):
            self.model.stop_training = True


def _batches(data, batch_size, seed):
    """Training data that never runs out, for `fit(steps_per_epoch=1)`."""

    args = _inputs.fit_kwargs(data, batch_size, shuffle=True)
    if "y" in args:
        x, y = args["x"], args["y"]
        rng = np.random.default_rng(seed)

        def arrays():
            while True:
                order = rng.permutation(len(y))
                for i in range(0, len(order) - batch_size + 1, batch_size):
                    index = np.sort(order[i : i + batch_size])
                    yield x[index], y[index]

        if len(y) < batch_size:
            raise ValueError(
                f"find_learning_rate needs at least one full batch: "
                f"{len(y)} samples for batch_size={batch_size}. "
                "Lower batch_size."
            )
        return arrays()
    source = args["x"]
    if _inputs.is_tf_dataset(source):
        return source.repeat()
    if isinstance(source, keras.utils.PyDataset):

        def cycle():
            while True:
                for i in range(len(source)):
                    yield source[i]

        return cycle()
    raise TypeError(
        "find_learning_rate takes an (x, y) tuple of arrays, a "
        "tf.data.Dataset or a keras.utils.PyDataset of (x, y) batches. "
        f"Received: {type(data).__name__}"
    )


def _check(min_learning_rate, max_learning_rate, num_steps):
    if not 0 < min_learning_rate < max_learning_rate:
        raise ValueError(
            "Need 0 < min_learning_rate < max_learning_rate. Received: "
            f"min_learning_rate={min_learning_rate!r}, "
            f"max_learning_rate={max_learning_rate!r}"
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or (
        num_steps < 5
    ):
        raise ValueError(
            f"`num_steps` must be an integer >= 5. Received: num_steps={num_steps!r}"
        )


def find_learning_rate(
    model,
    data,
    *,
    min_learning_rate=1e-7,
    max_learning_rate=1.0,
    num_steps=100,
    batch_size=32,
    plot_path=None,
    log_dir=None,
):
    """Sweeps the learning rate exponentially and restores the model.

    Use it before a stage to choose its `learning_rate`: freeze the model as
    the stage will (`transfer.set_trainable_blocks`), run the sweep, and take
    the suggestion or read the plot (the steepest fall of the loss, before
    it climbs). Each step is one batch trained with a fresh Adam at a rate
    growing from `min_learning_rate` to `max_learning_rate`; the sweep stops
    early when the smoothed loss exceeds 4 times its minimum or becomes
    NaN. Afterwards all weights (BatchNorm statistics included) are put
    back, and a model compiled before is compiled again as it was.

    Args:
        model: a `keras.Model` from `transfer.build_classifier` (or any
            model `transfer.fit_recipe` trains).
        data: an `(x, y)` tuple of arrays, a `tf.data.Dataset` or a
            `keras.utils.PyDataset` of `(x, y)` batches.
        min_learning_rate: the first rate. Defaults to `1e-7`.
        max_learning_rate: the last rate. Defaults to `1.0`.
        num_steps: number of batches (rates) in the sweep. Defaults to `100`.
        batch_size: batch size for array data. Defaults to `32`.
        plot_path: write a loss-versus-rate plot (log scale) to this PNG
            file. Defaults to `None`.
        log_dir: write TensorBoard scalars `lr_finder/loss`,
            `lr_finder/smoothed_loss` and `lr_finder/learning_rate` (step =
            sweep step) into this directory. Defaults to `None`.

    Returns:
        A `LearningRateSweep` with `learning_rates`, `losses`,
        `smoothed_losses` and `suggestion`.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> sweep = transfer.find_learning_rate(
    ...     model, transfer.synthetic_images(64, 32, 2), num_steps=10,
    ...     batch_size=16, max_learning_rate=1e-1)
    >>> sweep.learning_rates[0], len(sweep.losses) <= 10
    (1e-07, True)
    >>> 1e-7 <= sweep.suggestion <= 1e-1  # the weights are back as before
    True
    """
    _check(min_learning_rate, max_learning_rate, num_steps)
    if plot_path is not None:
        plots.require_matplotlib()
    growth = (max_learning_rate / min_learning_rate) ** (1 / (num_steps - 1))
    rates = [min_learning_rate * growth**i for i in range(num_steps)]
    batches = _batches(data, batch_size, seed=0)
    compile_config = model.get_compile_config() if model.compiled else None
    # Copies: on JAX a NumPy view can alias a buffer that training reuses.
    weights = [np.array(w, copy=True) for w in model.get_weights()]
    recorder = _SweepRecorder(rates)
    try:
        schedule = keras.optimizers.schedules.ExponentialDecay(
            min_learning_rate, decay_steps=1, decay_rate=growth
        )
        stage_options.compile_model(model, keras.optimizers.Adam(schedule))
        # One batch per epoch: the epoch's logged loss is that batch's loss
        # (within an epoch Keras logs running means).
        model.fit(batches, steps_per_epoch=1, epochs=num_steps, verbose=0,
                  shuffle=False, callbacks=[recorder])
    finally:
        model.set_weights(weights)
        if compile_config is not None:
            model.compile_from_config(compile_config)
    losses = recorder.losses
    smoothed = recorder.smoothed
    rates = rates[: len(losses)]
    if not smoothed:
        raise ValueError(
            "The loss was NaN or Inf from the first step of the sweep. "
            "Check the data for NaN values or lower min_learning_rate. "
            f"Received: min_learning_rate={min_learning_rate!r}"
        )
    best = int(np.argmin(smoothed))
    sweep = LearningRateSweep(
        learning_rates=tuple(float(r) for r in rates),
        losses=tuple(losses),
        smoothed_losses=tuple(float(s) for s in smoothed),
        suggestion=float(max(rates[best] / 10, min_learning_rate)),
    )
    logger.info("Learning-rate sweep: %d steps, suggestion %.3g",
                len(losses), sweep.suggestion)
    if plot_path is not None:
        _plot(sweep, plot_path)
    if log_dir is not None:
        _log(sweep, log_dir)
    return sweep


def _plot(sweep, path):
    figure = plots.new_figure(6, 4)
    axes = figure.add_subplot(1, 1, 1)
    rates = sweep.learning_rates
    axes.plot(rates, sweep.losses, alpha=0.3, label="loss")
    axes.plot(rates[: len(sweep.smoothed_losses)], sweep.smoothed_losses,
              label="smoothed loss")
    axes.axvline(sweep.suggestion, color="red", linestyle="--",
                 label=f"suggestion {sweep.suggestion:.2g}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.legend()
    figure.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path)


def _log(sweep, log_dir):
    writer = summaries.EventWriter(log_dir)
    try:
        for step, (rate, loss) in enumerate(
            zip(sweep.learning_rates, sweep.losses, strict=True)
        ):
            writer.scalar("lr_finder/learning_rate", rate, step)
            if math.isfinite(loss):
                writer.scalar("lr_finder/loss", loss, step)
            if step < len(sweep.smoothed_losses):
                writer.scalar("lr_finder/smoothed_loss",
                              sweep.smoothed_losses[step], step)
    finally:
        writer.close()
