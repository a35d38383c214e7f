"""TensorBoard events through `tf.summary`: writers, text, images, HParams.

Every event goes through TensorFlow's summary API (and TensorBoard's HParams
API), which Keras's own `keras.callbacks.TensorBoard` uses on every backend;
`transfer` never writes its own event format. This module also formats the
Markdown that the text dashboard shows: stages, freeze plans, model
summaries and the manifest.
"""

import json
import logging
import os

import numpy as np

from transfer import _backend
from transfer import _inputs
from transfer import _io
from transfer import _model_info

logger = logging.getLogger(__name__)

# Text entries longer than this are cut: TensorBoard renders them in one card.
_MAX_LISTED_LAYERS = 40


def check_log_dir(log_dir):
    """Creates `log_dir` if needed and checks that files can be written there.

    Args:
        log_dir: a directory path.

    Raises:
        ValueError: the directory cannot be created or written to.
    """
    try:
        _io.probe_writable(log_dir)
    except OSError as e:
        raise ValueError(
            f"Cannot write TensorBoard logs to '{log_dir}' ({e.strerror}). "
            f"Choose a writable log_dir. Received: log_dir={str(log_dir)!r}"
        ) from e


def check_new_log_dir(log_dir, run_dir):
    """Checks that `log_dir` is writable and holds no earlier run's events.

    A run that stopped before its manifest leaves event files behind; a new
    run's files in the same directories would mix into the same curves.

    Raises:
        ValueError: `log_dir` holds event files, or cannot be written to.
    """
    leftovers = find_event_files(log_dir)
    if leftovers:
        raise ValueError(
            f"'{run_dir}' holds TensorBoard logs of an earlier run that did "
            f"not finish ({len(leftovers)} event file(s), e.g. "
            f"'{os.path.relpath(leftovers[0], run_dir)}'); a new run's logs "
            f"would mix with them. Pass a new run_dir, or delete '{log_dir}'. "
            f"Received: run_dir={str(run_dir)!r}"
        )
    check_log_dir(log_dir)


_OWNER_FILE = ".transfer-run"


def claim_log_dir(log_dir, run_id):
    """Marks `log_dir` as written by the run `run_id` (for resuming it)."""
    with open(os.path.join(log_dir, _OWNER_FILE), "w", encoding="utf-8") as f:
        f.write(run_id)
        f.flush()
        os.fsync(f.fileno())


def check_resumed_log_dir(log_dir, run_dir, run_id):
    """Lets a resumed run continue its own logs, and only its own.

    Event files left by the run `run_id` (marked by `claim_log_dir`) are
    continued; any other run's event files are refused, as for a new run.

    Raises:
        ValueError: `log_dir` holds another run's events, or is not writable.
    """
    leftovers = find_event_files(log_dir)
    try:
        with open(os.path.join(log_dir, _OWNER_FILE), encoding="utf-8") as f:
            owner = f.read().strip()
    except OSError:
        owner = None
    if leftovers and owner != run_id:
        raise ValueError(
            f"'{run_dir}' holds an unfinished run to resume, but its "
            f"TensorBoard logs ({len(leftovers)} event file(s), e.g. "
            f"'{os.path.relpath(leftovers[0], run_dir)}') were not written "
            "by that run; resuming would mix two runs' logs. Pass a new "
            f"run_dir, or delete '{log_dir}'. Received: run_dir="
            f"{str(run_dir)!r}"
        )
    check_log_dir(log_dir)
    if owner != run_id:
        claim_log_dir(log_dir, run_id)


def find_event_files(log_dir):
    """Paths of the TensorBoard event files under `log_dir`, sorted."""
    found = []
    for root, _, files in os.walk(log_dir):
        found.extend(
            os.path.join(root, name)
            for name in files
            if name.startswith("events.out.tfevents")
        )
    return sorted(found)


def count_params(weights):
    """Number of scalars in a list of Keras variables."""
    return int(sum(np.prod(w.shape) for w in weights))


class EventWriter:
    """A `tf.summary` file writer for one run directory, opened on first use.

    Callbacks open one per `fit` and close it in `on_train_end`, flushing
    after each epoch. TensorBoard only polls the newest event file of a run
    directory for new data (unless `--reload_multifile=true`), so a
    directory must never hold two writers open at once: that is why each
    `transfer` callback writes to its own run directory, apart from
    `keras.callbacks.TensorBoard`'s `train` and `validation`.

    Args:
        directory: the run directory that receives the event file.
    """

    def __init__(self, directory):
        self.directory = directory
        self._writer = None

    def _get(self):
        if self._writer is None:
            _backend.require_tensorboard()
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(self.directory)
        return self._writer

    def scalar(self, tag, value, step, description=None):
        import tensorflow as tf

        with self._get().as_default():
            tf.summary.scalar(
                tag, float(value), step=int(step), description=description
            )

    def text(self, tag, markdown, step, description=None):
        import tensorflow as tf

        with self._get().as_default():
            tf.summary.text(
                tag, str(markdown), step=int(step), description=description
            )

    def image(self, tag, image, step, description=None):
        """Writes one `uint8` image shaped `(height, width, channels)`."""
        import tensorflow as tf

        image = np.asarray(image, dtype="uint8")[None]
        with self._get().as_default():
            tf.summary.image(
                tag, image, step=int(step), max_outputs=1,
                description=description,
            )

    def hparams(self, hparams, trial_id=None):
        from tensorboard.plugins.hparams import api as hp

        with self._get().as_default():
            hp.hparams(hparams, trial_id=trial_id)

    def flush(self):
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def check_hparams(hparams):
    """Checks that HParams are a dict of str keys to bool/int/float/str."""
    if not isinstance(hparams, dict) or not hparams:
        raise ValueError(
            "`hparams` must be a non-empty dict of name to value. "
            f"Received: hparams={hparams!r}"
        )
    for name, value in hparams.items():
        if not isinstance(name, str) or not isinstance(
            value, (bool, int, float, str, np.number, np.bool_)
        ):
            raise ValueError(
                "HParams map str names to bool, int, float or str values "
                "(TensorBoard's HParams dashboard shows nothing else). "
                f"Received: {name!r}={value!r}"
            )


def recipe_hparams(model, recipe, train_data, batch_size):
    """HParams of one `fit_recipe` run: backend, model, data, every stage.

    Stages are numbered from 1 (`stage1_epochs`, `stage2_learning_rate`,
    ...) so that runs whose stages are named differently still line up in
    the HParams table. `trainable_blocks` is a string (`"3"`, `"all"`) so
    that its column has one type across runs.

    `all_stages` sums up every stage in one string, e.g. `"head: 3 ep, lr
    0.001, blocks 0 | finetune: 10 ep, lr 0.0003, blocks all, cosine"`.
    TensorBoard's HParams dashboard shows only 5 hyperparameter columns
    until more are ticked: those that differ between runs first, then the
    others by name. A stage that only some runs have never "differs" (one
    value), so `stage2_*` stayed hidden next to a one-stage baseline;
    `all_stages` sorts first in either group, so every stage is in view.

    Args:
        model: the classifier being trained.
        recipe: the `Recipe`.
        train_data: the training data, to read the batch size of datasets.
        batch_size: the batch size used for array data.

    Returns:
        A dict of str to bool/int/float/str.
    """

    metadata = dict(getattr(model, "transfer_metadata", None) or {})
    weights = metadata.get("weights") or {}
    hparams = {
        "backend": _backend.backend(),
        "backbone": str(metadata.get("backbone") or _model_info.find_backbone(model).name),
        "weights": str(weights.get("weights") or "none"),
        "weights_source": str(weights.get("source") or "unknown"),
        "batch_size": _inputs.data_batch_size(train_data, batch_size),
        "num_stages": len(recipe),
    }
    if metadata.get("modality") == "text":
        hparams["sequence_length"] = int(metadata.get("sequence_length") or 0)
        hparams["lora_rank"] = int(metadata.get("lora_rank") or 0)
    else:
        hparams["image_size"] = int(
            metadata.get("image_size") or model.input_shape[1]
        )
    hparams["all_stages"] = " | ".join(
        f"{stage.name}: {stage.epochs} ep, lr {stage.learning_rate:g}, "
        f"blocks {stage.trainable_blocks}"
        + ("" if stage.schedule == "constant" else f", {stage.schedule}")
        for stage in recipe
    )
    for number, stage in enumerate(recipe, start=1):
        prefix = f"stage{number}_"
        hparams[prefix + "name"] = stage.name
        hparams[prefix + "epochs"] = int(stage.epochs)
        hparams[prefix + "learning_rate"] = float(stage.learning_rate)
        hparams[prefix + "trainable_blocks"] = str(stage.trainable_blocks)
        hparams[prefix + "schedule"] = stage.schedule
        hparams[prefix + "optimizer"] = stage.optimizer
        hparams[prefix + "weight_decay"] = float(stage.weight_decay)
        hparams[prefix + "gradient_accumulation_steps"] = int(
            stage.gradient_accumulation_steps)
        hparams[prefix + "loss"] = stage.loss
        hparams[prefix + "patience"] = int(stage.patience or 0)
        hparams[prefix + "monitor"] = stage.monitor or "default"
    return hparams


def _table(rows, header):
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def _current_learning_rate(model):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    import keras

    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def stage_markdown(model, stage, stage_number, first_epoch, epochs):
    """Markdown for a stage's text entry: name, epochs, rate, parameters."""
    config = stage.get_config() if stage is not None else {}
    name = config.get("name", "fit")
    # Epochs as Keras's progress bar counts them (from 1); TensorBoard
    # steps are Keras's 0-based `epoch`.
    last = epochs if epochs else "?"
    last_step = epochs - 1 if epochs else "?"
    rows = [
        ("stage", f"{stage_number} (`{name}`)"),
        ("epochs", f"{first_epoch + 1} to {last}"),
        ("TensorBoard steps", f"{first_epoch} to {last_step}"),
    ]
    if "learning_rate" in config:
        rows.append(
            ("learning rate", f"{config['learning_rate']:g} "
             f"({config.get('schedule', 'constant')})")
        )
    else:
        rate = _current_learning_rate(model)
        rows.append(("learning rate", "?" if rate is None else f"{rate:g}"))
    for key in ("trainable_blocks", "train_batchnorm"):
        if key in config:
            rows.append((key.replace("_", " "), f"`{config[key]!r}`"))
    rows.append(
        ("trainable parameters", f"{count_params(model.trainable_weights):,}")
    )
    rows.append(
        ("frozen parameters", f"{count_params(model.non_trainable_weights):,}")
    )
    return (
        f"**Stage {stage_number} `{name}` starts at epoch {first_epoch + 1}"
        f" (step {first_epoch})**\n\n"
        + _table(rows, ("setting", "value"))
    )


def _listed(names):
    names = list(names)
    shown = ", ".join(f"`{n}`" for n in names[:_MAX_LISTED_LAYERS])
    if len(names) > _MAX_LISTED_LAYERS:
        shown += f" and {len(names) - _MAX_LISTED_LAYERS} more"
    return shown or "none"


def freeze_plan_markdown(model, freeze_plan=None):
    """Markdown for the `freeze_plan` text entry.

    With a `transfer.FreezePlan`: one row per backbone block and the head.
    Without one (a user's own model): one row per top-level layer.
    """
    if freeze_plan is not None:
        rows = [
            (name, "train" if trainable else "frozen", f"{n_train:,}",
             f"{n_total:,}")
            for name, _, trainable, n_train, n_total in freeze_plan.blocks
        ]
        title = f"`trainable_blocks={freeze_plan.trainable_blocks!r}`"
        layers = freeze_plan.trainable_layers
    else:
        rows = [
            (layer.name, "train" if layer.trainable_weights else "frozen",
             f"{count_params(layer.trainable_weights):,}",
             f"{count_params(layer.weights):,}")
            for layer in model.layers
        ]
        title = "every top-level layer"
        layers = [
            layer.name for layer in model.layers if layer.trainable_weights
        ]
    header = ("block", "status", "trainable params", "params")
    return (
        f"**Freeze plan, {title}**: "
        f"{count_params(model.trainable_weights):,} trainable / "
        f"{count_params(model.non_trainable_weights):,} frozen parameters\n\n"
        + _table(rows, header)
        + f"\n\nTrainable layers ({len(layers)}): {_listed(layers)}"
    )


def model_summary_markdown(model):
    """`model.summary()` as a Markdown code block."""
    lines = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    return "```\n" + "\n".join(lines).strip("\n") + "\n```"


def json_markdown(data):
    """A JSON code block, for the manifest text entry."""
    return "```json\n" + json.dumps(data, indent=2, default=str) + "\n```"


def write_manifest(log_dir, manifest, step):
    """Writes the run's manifest as text `manifest` into `log_dir` itself."""
    writer = EventWriter(log_dir)
    writer.text(
        "manifest", json_markdown(manifest), step,
        description="manifest.json of this run",
    )
    writer.close()
