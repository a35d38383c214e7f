"""What a `Stage`'s options build: optimizer, loss, metrics, fit data.

`fit_recipe` calls these once per stage, after `set_trainable_blocks`:

- `build_optimizer`: a fresh Adam (with the stage's schedule and EMA), or,
  with `layer_decay < 1`, a `keras.optimizers.MultiOptimizer` holding one
  Adam per trainable backbone block, each at `learning_rate * layer_decay **
  depth` (depth 1 = the top block; the head trains at `learning_rate`).
- `loss_and_metrics`: cross-entropy for the model's task, with one-hot labels
  when the stage smooths or mixes labels.
- `stage_data`: the training data with the stage's augmentations
  (`keras.layers.MixUp`, `CutMix`, `RandAugment` in `tf.data`) and labels
  one-hot where needed, plus `class_weight` when asked for.
"""

import logging
import re

import keras
import numpy as np

from transfer import _backend
from transfer import _model_info
from transfer.backbones.blocks import assign_blocks
from transfer.models.freeze import backbone_blocks

logger = logging.getLogger(__name__)


def block_depths(model, trainable_blocks):
    """`(layer, depth)` of the layers in trainable backbone blocks.

    Depth 1 is the top block, 2 the one below it, and so on.
    """
    backbone = _model_info.find_backbone(model)
    patterns = backbone_blocks(backbone)
    if trainable_blocks != "all" and trainable_blocks > len(patterns):
        raise ValueError(
            f"The backbone has {len(patterns)} blocks, so `trainable_blocks` "
            f"can be at most {len(patterns)} (or 'all'). "
            f"Received: trainable_blocks={trainable_blocks!r}"
        )
    return [
        (layer, len(patterns) - index)
        for layer, index in assign_blocks(backbone, patterns)
    ]


def check_block_counts(model, recipe):
    """Raises before training when a stage unfreezes more blocks than the
    backbone has."""
    for stage in recipe:
        blocks = stage.trainable_blocks
        if blocks == "all" or blocks == 0:
            continue
        try:
            block_depths(model, blocks)
        except ValueError as e:
            raise ValueError(f"Stage '{stage.name}': {e}") from None


_OPTIMIZERS = {
    "adam": (keras.optimizers.Adam, {}),
    "adamw": (keras.optimizers.AdamW, {}),
    "sgd": (keras.optimizers.SGD, {"momentum": 0.9, "nesterov": True}),
    "lion": (keras.optimizers.Lion, {}),
}


def make_optimizer(stage, learning_rate, *, no_decay=(), name=None):
    """One optimizer of `stage.optimizer` with the stage's options.

    Weight decay skips the variables in `no_decay`. With gradient
    accumulation over `k` batches, Keras updates the EMA at every batch
    while the weights change every `k`-th: the EMA momentum is set to
    `0.99 ** (1 / k)`, so that it decays as 0.99 per optimizer step.

    Example:

    >>> stage = transfer.Stage("s", 1, 1e-3, optimizer="adamw",
    ...                        weight_decay=0.05, global_clipnorm=1.0)
    >>> optimizer = make_optimizer(stage, 1e-3)
    >>> type(optimizer).__name__, optimizer.weight_decay
    ('AdamW', 0.05)
    """
    cls, kwargs = _OPTIMIZERS[stage.optimizer]
    kwargs = dict(kwargs, learning_rate=learning_rate, use_ema=stage.ema)
    if stage.weight_decay or stage.optimizer == "adamw":
        kwargs["weight_decay"] = stage.weight_decay
    if stage.clipnorm is not None:
        kwargs["clipnorm"] = stage.clipnorm
    if stage.global_clipnorm is not None:
        kwargs["global_clipnorm"] = stage.global_clipnorm
    steps = stage.gradient_accumulation_steps
    if steps > 1:
        kwargs["gradient_accumulation_steps"] = steps
        if stage.ema:
            kwargs["ema_momentum"] = 0.99 ** (1.0 / steps)
    if name is not None:
        kwargs["name"] = name
    optimizer = cls(**kwargs)
    if stage.weight_decay and no_decay:
        optimizer.exclude_from_weight_decay(var_list=list(no_decay))
    return optimizer


def no_decay_variables(model):
    """Biases and normalization scales/offsets: trainable variables of
    rank <= 1, which weight decay leaves alone (as timm and the BERT/ViT
    recipes do)."""
    return [v for v in model.trainable_variables if len(v.shape) <= 1]


def build_optimizer(model, stage, steps_per_epoch):
    """A fresh optimizer for `stage`; call after `set_trainable_blocks`.

    Returns:
        The stage's optimizer (`make_optimizer`), or with
        `stage.layer_decay < 1` a `keras.optimizers.MultiOptimizer` of one
        such optimizer per block depth.
    """
    no_decay = no_decay_variables(model) if stage.weight_decay else ()
    if stage.layer_decay == 1.0 or stage.trainable_blocks == 0:
        return make_optimizer(
            stage, stage.learning_rate_for(steps_per_epoch),
            no_decay=no_decay,
        )
    head = make_optimizer(
        stage, stage.learning_rate_for(steps_per_epoch), no_decay=no_decay,
        name=f"{stage.optimizer}_head",
    )
    paths = {}
    for layer, depth in block_depths(model, stage.trainable_blocks):
        paths.setdefault(depth, []).extend(
            v.path for v in layer.trainable_weights
        )
    optimizer_map = keras.optimizers.OptimizerMap(head)
    for depth, names in sorted(paths.items()):
        if not names:
            continue
        scale = stage.layer_decay**depth
        # One regex key per block: a saved model then reloads one optimizer
        # per block, with the variables it had.
        key = "(?:" + "|".join(re.escape(p) for p in names) + ")"
        optimizer_map[key] = make_optimizer(
            stage, stage.learning_rate_for(steps_per_epoch, scale),
            no_decay=no_decay, name=f"{stage.optimizer}_depth{depth}",
        )
        logger.info("Block at depth %d: learning rate x %.4g (%d variables)",
                    depth, scale, len(names))
    return keras.optimizers.MultiOptimizer(optimizer_map)


class SeparateEmaBuffers(keras.callbacks.Callback):
    """First `on_train_end` hook of an EMA stage: see
    `_backend.separate_optimizer_buffers`."""

    def on_train_end(self, logs=None):
        _backend.separate_optimizer_buffers(self.model)


def stage_callbacks(stage):
    """Callbacks the stage's options need, to run before all others."""
    return [SeparateEmaBuffers()] if stage.ema else []


def one_hot_labels(stage):
    """Whether the stage trains on one-hot (soft) class labels: label
    smoothing, MixUp/CutMix, the focal loss and a macro-F1 monitor need
    them."""
    return (
        stage.label_smoothing > 0
        or bool({"mixup", "cutmix"} & set(stage.augment))
        or stage.loss == "focal"
        or (stage.monitor or "").endswith("macro_f1")
    )


def loss_and_metrics(model, stage, from_logits):
    """`compile` arguments for the model's task and the stage's options."""
    task = _model_info.model_task(model)
    smoothing = 0.0 if stage is None else stage.label_smoothing
    focal = stage is not None and stage.loss == "focal"
    if focal and task == "regression":
        raise ValueError(
            f"Stage '{stage.name}': loss='focal' is for classifiers; this "
            "model is a regressor. Received: loss='focal'"
        )
    if task == "regression":
        return {
            "loss": keras.losses.MeanSquaredError(),
            "metrics": [
                keras.metrics.MeanAbsoluteError(name="mae"),
                keras.metrics.RootMeanSquaredError(name="rmse"),
            ],
        }
    if task == "multilabel":
        binary = (
            keras.losses.BinaryFocalCrossentropy if focal
            else keras.losses.BinaryCrossentropy
        )
        return {
            "loss": binary(
                from_logits=from_logits, label_smoothing=smoothing
            ),
            "metrics": [
                keras.metrics.BinaryAccuracy(
                    name="accuracy", threshold=0.0 if from_logits else 0.5
                ),
                keras.metrics.AUC(
                    name="auc", multi_label=True, from_logits=from_logits
                ),
                keras.metrics.F1Score(
                    average="macro", threshold=None if from_logits else 0.5,
                    name="f1",
                ),
            ],
        }
    if stage is not None and one_hot_labels(stage):
        categorical = (
            keras.losses.CategoricalFocalCrossentropy if focal
            else keras.losses.CategoricalCrossentropy
        )
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        if (stage.monitor or "").endswith("macro_f1"):
            metrics.append(keras.metrics.F1Score(
                average="macro", name="macro_f1"))
        return {
            "loss": categorical(
                from_logits=from_logits, label_smoothing=smoothing
            ),
            "metrics": metrics,
        }
    return {
        "loss": keras.losses.SparseCategoricalCrossentropy(
            from_logits=from_logits
        ),
        "metrics": ["accuracy"],
    }


def _labels_of(fit_args):
    if "y" in fit_args:
        return np.asarray(fit_args["y"])
    data = fit_args["x"]
    labels = []
    if isinstance(data, keras.utils.PyDataset):
        batches = (data[i] for i in range(len(data)))
    else:
        try:
            batches = iter(data)
        except TypeError:
            return None
    for batch in batches:
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            labels.append(keras.ops.convert_to_numpy(batch[1]))
        else:
            return None
    return np.concatenate(labels) if labels else None


def balanced_class_weight(labels, num_classes):
    """`{class: n / (num_classes * count)}`; 1.0 for absent classes."""
    labels = np.asarray(labels).reshape(-1).astype("int64")
    counts = np.bincount(labels, minlength=num_classes)
    return {
        c: float(len(labels) / (num_classes * counts[c])) if counts[c] else 1.0
        for c in range(num_classes)
    }


def _as_tf_dataset(fit_args, stage):
    import tensorflow as tf

    data = fit_args["x"]
    if "y" in fit_args:
        x, y = data, fit_args["y"]
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if fit_args.get("shuffle"):
            ds = ds.shuffle(len(y), reshuffle_each_iteration=True)
        return ds.batch(fit_args["batch_size"])
    if isinstance(data, tf.data.Dataset):
        return data
    raise ValueError(
        f"Stage '{stage.name}': `augment` and `label_smoothing` transform "
        "batches in tf.data, so the training data must be a "
        "tf.data.Dataset or an (x, y) tuple of arrays. "
        f"Received: {type(data).__name__}"
    )


def _one_hot(y, num_classes):
    import tensorflow as tf

    y = tf.cast(tf.reshape(y, [-1]), "int32")
    return tf.one_hot(y, num_classes)


def _augmenter(stage, num_classes, seed, soft):
    """A batch function `(x, y) -> (x, y)` for `tf.data.Dataset.map`."""
    import tensorflow as tf

    rand = (
        keras.layers.RandAugment(value_range=(0, 255), seed=seed)
        if "randaugment" in stage.augment else None
    )
    mixers = [
        layer(seed=seed) for name, layer in
        (("mixup", keras.layers.MixUp), ("cutmix", keras.layers.CutMix))
        if name in stage.augment
    ]

    def mix(layer, x, y):
        y = tf.cast(y, "float32")
        out = layer({"images": x, "labels": y}, training=True)
        return tf.cast(out["images"], x.dtype), tf.cast(out["labels"], y.dtype)

    def transform(x, y):
        if soft:
            y = _one_hot(y, num_classes)
        if rand is not None:
            x = tf.cast(rand(x, training=True), x.dtype)
        if len(mixers) == 1:
            x, y = mix(mixers[0], x, y)
        elif len(mixers) == 2:
            # As timm does: MixUp or CutMix, chosen per batch.
            x, y = tf.cond(
                tf.random.uniform(()) < 0.5,
                lambda: mix(mixers[0], x, y),
                lambda: mix(mixers[1], x, y),
            )
        return x, y

    return transform


_LOWER_IS_BETTER = ("loss", "mae", "rmse")


def logged_metrics(model, stage):
    """The metric names `fit` logs for `model` in `stage` (without `val_`)."""
    task = _model_info.model_task(model)
    if _model_info.is_masked_lm(model):
        return ["loss", "accuracy"]
    if getattr(model, "self_supervised", False):
        # Contrastive loss and pretext accuracy, unless the model says
        # (masked image models log their reconstruction loss only).
        return list(getattr(model, "pretext_metrics", ("loss", "accuracy")))
    if task == "regression":
        return ["loss", "mae", "rmse"]
    if task == "multilabel":
        return ["loss", "accuracy", "auc", "f1"]
    names = ["loss", "accuracy"]
    if stage is not None and (stage.monitor or "").endswith("macro_f1"):
        names.append("macro_f1")
    return names


def monitor_for(model, validation_data, stage=None):
    """`(monitor, mode)` that picks the best weights and drives early
    stopping: the stage's `monitor`, else accuracy, or for a regressor the
    loss; `mode` is `"min"` for losses and errors, else `"max"`.

    Raises:
        ValueError: the stage's `monitor` is not a metric the model logs
            (with validation data, the `val_` ones count too).
    """
    prefix = "val_" if validation_data is not None else ""
    monitor = stage.monitor if stage is not None else None
    if monitor is None:
        if _model_info.model_task(model) == "regression":
            return prefix + "loss", "min"
        return prefix + "accuracy", "max"
    names = logged_metrics(model, stage)
    allowed = names + (
        ["val_" + n for n in names] if validation_data is not None else []
    )
    if monitor not in allowed:
        raise ValueError(
            f"Stage '{stage.name}': `monitor` must be a metric this model "
            f"logs: {allowed}. (`val_` metrics need validation data.) "
            f"Received: monitor={monitor!r}"
        )
    base = monitor[len("val_"):] if monitor.startswith("val_") else monitor
    return monitor, "min" if base in _LOWER_IS_BETTER else "max"


def check_monitors(model, recipe, validation_data):
    """Refuses, before training, a stage `monitor` the model does not log."""
    for stage in recipe:
        monitor_for(model, validation_data, stage)


def stage_data(stage, fit_args, validation_data, num_classes, *,
               is_image, task="classification", seed=None):
    """The stage's `fit` keyword arguments and validation data.

    Returns:
        `(fit_args, validation_data)`: unchanged when the stage neither
        augments, smooths labels nor weights classes.
    """
    fit_args = dict(fit_args)
    if task != "classification" and (
        stage.class_weight or stage.label_smoothing and task != "multilabel"
    ):
        raise ValueError(
            f"Stage '{stage.name}': class_weight and label_smoothing are for "
            f"classifiers; this model's task is '{task}'. Received: "
            f"class_weight={stage.class_weight!r}, "
            f"label_smoothing={stage.label_smoothing!r}"
        )
    if task != "classification":
        soft = False
    else:
        soft = one_hot_labels(stage)
    if stage.class_weight == "auto":
        labels = _labels_of(fit_args)
        if labels is None:
            raise ValueError(
                f"Stage '{stage.name}': class_weight='auto' needs labelled "
                "training data to count the classes. Received training data "
                "without labels."
            )
        fit_args["class_weight"] = balanced_class_weight(labels, num_classes)
        logger.info("Stage '%s': class weights %s", stage.name,
                    fit_args["class_weight"])
    if not stage.augment and not soft:
        return fit_args, validation_data
    if stage.augment and not is_image:
        raise ValueError(
            f"Stage '{stage.name}': `augment` works on images only; this "
            f"model is not an image model. Received: augment={stage.augment}"
        )
    import tensorflow as tf

    ds = _as_tf_dataset(fit_args, stage)
    ds = ds.map(_augmenter(stage, num_classes, seed, soft),
                num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
    class_weight = fit_args.get("class_weight")
    fit_args = {"x": ds, "shuffle": False}
    if class_weight is not None:
        fit_args["class_weight"] = class_weight
    if soft and validation_data is not None:
        validation_data = _one_hot_validation(validation_data, num_classes,
                                              stage)
    return fit_args, validation_data


def _one_hot_validation(data, num_classes, stage):
    import tensorflow as tf

    if isinstance(data, tuple) and len(data) == 2:
        y = np.asarray(data[1]).reshape(-1).astype("int64")
        return data[0], np.eye(num_classes, dtype="float32")[y]
    if isinstance(data, tf.data.Dataset):
        return data.map(lambda x, y, *rest: (x, _one_hot(y, num_classes)))
    raise ValueError(
        f"Stage '{stage.name}': with label smoothing, MixUp or CutMix the "
        "validation data must be a tf.data.Dataset or an (x, y) tuple. "
        f"Received: {type(data).__name__}"
    )


def build_before_fit(model, x, y=None):
    """Creates the optimizer's, metrics' and loss's variables of a compiled
    `model` before `fit` traces its training step, on TensorFlow.

    Without a distribution strategy, Keras-on-TensorFlow creates them while
    it traces the step, and a `tf.function` that creates variables is
    traced twice: for EfficientNet-Lite0 the first `fit` step took ~2 s and
    the first `train_on_batch` ~3.6 s longer (benchmarks/README.md, "Time to
    first step"). This is the build Keras itself runs first on JAX, torch
    and under a strategy (`Trainer._symbolic_build`), from one batch's
    shapes (`x` a `tf.data.Dataset` of `(x, y[, sample_weight])` or arrays),
    without running a built functional model (`_build_from_outputs`).
    Anything it cannot build is left to Keras, as before.
    """
    if (_backend.backend() != "tensorflow" or model.optimizer is None
            or getattr(model, "_distribute_strategy", None) is not None):
        return False
    build = getattr(model, "_symbolic_build", None)
    if build is None:
        return False
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        batch = tuple(spec) if isinstance(spec, tuple) else (spec,)
    elif isinstance(x, (np.ndarray, dict, list)):
        batch = keras.tree.map_structure(
            lambda v: v[:1] if hasattr(v, "shape") else v, (x, y))
    else:
        return False
    batch = (batch + (None, None))[:3]
    try:
        if not _build_from_outputs(model, batch):
            build(data_batch=batch)
    except Exception as e:  # noqa: BLE001 (Keras builds it while tracing)
        logger.debug("Building before fit failed (%s); Keras builds while "
                     "tracing.", e)
        return False
    return True


def _build_from_outputs(model, batch):
    """`Trainer._symbolic_build` without running the model: a built
    functional model's outputs are known from its graph, so the metrics
    and the loss are built on tensors of those shapes (Keras traces the
    whole model once more for them: 0.3 s of EfficientNet-Lite0's first
    step on TensorFlow). `False`, doing nothing, for anything else.
    """
    from keras.src import backend as keras_backend
    from keras.src.models.functional import Functional

    if (not isinstance(model, Functional) or not model.built
            or not all(layer.built for layer in model._flatten_layers())):
        return False

    def symbolic(value):
        if value is None:
            return None
        return keras.KerasTensor(
            value.shape, keras.backend.standardize_dtype(value.dtype))

    x, y, sample_weight = keras.tree.map_structure(symbolic, batch)
    size = keras.tree.flatten(x)[0].shape[0]
    y_pred = keras.tree.map_structure(
        lambda t: keras.KerasTensor((size, *t.shape[1:]), t.dtype),
        model._outputs_struct)
    compute_output_spec = keras_backend.compute_output_spec
    metrics, loss = model._compile_metrics, model._compile_loss
    if metrics is not None and not metrics.built:
        compute_output_spec(model.compute_metrics, x, y, y_pred,
                            sample_weight=sample_weight)
    if loss is not None and not loss.built:
        compute_output_spec(model._compute_loss, x, y, y_pred,
                            sample_weight=sample_weight, training=False)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model._post_build()
    return True


def compile_model(model, optimizer, stage=None, jit_compile="auto"):
    """Compiles `model` with `optimizer` for its task and the stage's
    options, or masked-LM with masked-token metrics.

    Self-supervised image models (`transfer.pretraining.contrastive.ContrastivePretrainer`)
    compute their own loss and metrics: they get the optimizer only.
    """
    if getattr(model, "self_supervised", False):
        model.compile(optimizer=optimizer, jit_compile=jit_compile)
        return
    if _model_info.is_masked_lm(model):
        # Unmasked positions carry zero sample weight: accuracy must be a
        # weighted metric to count masked tokens only.
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            ],
            jit_compile=jit_compile,
        )
        return
    model.compile(
        optimizer=optimizer,
        **loss_and_metrics(model, stage, _model_info.is_logits(model)),
        jit_compile=jit_compile,
    )
