"""The engines behind `distribute=`: Keras's distribution API on JAX,
`tf.distribute` on TensorFlow, a clear refusal on torch.

Besides `_backend.py`, the only module that branches on the backend; the
backend-neutral part (`DistributionPlan`, the modes) is
`transfer.training.distribute`.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile

import keras
import numpy as np

from transfer import _backend
from transfer.training import run_dir as run_dir_lib
from transfer.training.distribute import NO_DISTRIBUTION
from transfer.training.distribute import DistributionPlan
from transfer.training.distribute import check_distribute

logger = logging.getLogger(__name__)

_TORCH_MESSAGE = (
    "Keras {version}'s torch backend has no distribution API: "
    "`keras.distribution` runs on JAX, and Keras on TensorFlow trains "
    "through `tf.distribute`; `model.fit` on torch uses one device. Run with "
    "KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow to train on several "
    "devices, or pass distribute=None. Received: distribute={distribute!r}"
)


def _refuse_tf_model_parallel(mode, distribute):
    if mode == "model_parallel":
        raise ValueError(
            "Keras 3 on TensorFlow trains through tf.distribute, which "
            "replicates the model (data parallelism); Keras's model "
            "parallelism (keras.distribution.ModelParallel) runs on JAX. "
            "Use KERAS_BACKEND=jax, or distribute='data_parallel'. "
            f"Received: distribute={distribute!r}"
        )


def make_plan(distribute, *, devices=None, model_shards=None):
    """A `DistributionPlan` with a new engine (see `distribution_scope`)."""
    mode = check_distribute(distribute)
    backend = _backend.backend()
    if mode == "none":
        return NO_DISTRIBUTION
    if backend == "jax":
        return _jax_plan(mode, devices, model_shards)
    if backend == "tensorflow":
        _refuse_tf_model_parallel(mode, distribute)
        return _tf_plan(devices)
    raise ValueError(_TORCH_MESSAGE.format(
        version=keras.__version__, distribute=distribute))


class ShardLastAxis(keras.distribution.ModelParallel):
    """`ModelParallel` that splits every kernel's last axis when it can.

    A variable of rank 2 or more whose last dimension divides by the mesh's
    `model` axis is split along it; everything else is replicated. Layouts
    follow shapes, so optimizer slots land like their variables.
    """

    def get_variable_layout(self, variable):
        if getattr(variable, "_layout", None) is not None:
            return variable._layout
        shape = tuple(variable.shape)
        shards = self.device_mesh.shape[1]
        axes = [None] * len(shape)
        if len(shape) >= 2 and shape[-1] % shards == 0:
            axes[-1] = "model"
        return keras.distribution.TensorLayout(axes, self.device_mesh)


def _jax_plan(mode, devices, model_shards, mesh=None):
    import jax

    if mesh is None:
        devices = list(devices or keras.distribution.list_devices())
        count = len(devices)
        if mode == "data_parallel":
            shape, names = (count,), ("batch",)
        else:
            shards = count if model_shards is None else model_shards
            if (isinstance(shards, bool) or not isinstance(shards, int)
                    or shards < 1 or count % shards):
                raise ValueError(
                    f"`model_shards` must be a positive divisor of the "
                    f"number of devices ({count}). Received: "
                    f"model_shards={model_shards!r}"
                )
            shape, names = (count // shards, shards), ("batch", "model")
        mesh = keras.distribution.DeviceMesh(shape, names, devices=devices)
    if mode == "data_parallel":
        handle = keras.distribution.DataParallel(device_mesh=mesh)
    else:
        layout_map = keras.distribution.LayoutMap(mesh)
        handle = ShardLastAxis(layout_map=layout_map, batch_dim_name="batch")
    shape = tuple(mesh.shape)
    return DistributionPlan(
        mode=mode,
        engine="keras.distribution."
        + ("DataParallel" if mode == "data_parallel" else "ModelParallel"),
        devices=tuple(str(d) for d in np.ravel(mesh.devices)),
        num_replicas=int(shape[0]),
        model_shards=int(shape[1]) if len(shape) > 1 else 1,
        num_processes=int(jax.process_count()),
        process_id=int(jax.process_index()),
        is_chief=jax.process_index() == 0,
        handle=handle,
    )


def _tf_cluster():
    """`TF_CONFIG`'s cluster and task, or `(None, None)` on one host."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster = config.get("cluster") or {}
    if sum(len(v) for v in cluster.values()) < 2:
        return None, None
    return cluster, config.get("task") or {}


def _tf_plan(devices=None, strategy=None):
    import tensorflow as tf

    cluster, task = _tf_cluster()
    if strategy is None:
        if cluster is not None:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            if devices is None:
                devices = [d.name for d in tf.config.list_logical_devices("GPU")]
                devices = devices or [
                    d.name for d in tf.config.list_logical_devices("CPU")]
            strategy = tf.distribute.MirroredStrategy(devices=list(devices))
    multi_worker = isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy)
    num_processes, process_id, is_chief = 1, 0, True
    if multi_worker and cluster is not None:
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
        num_processes = sum(len(v) for v in cluster.values())
        is_chief = kind == "chief" or (
            kind == "worker" and index == 0 and "chief" not in cluster)
        process_id = 0 if is_chief else index + ("chief" in cluster)
    return DistributionPlan(
        mode="data_parallel",
        engine=f"tf.distribute.{type(strategy).__name__}",
        devices=tuple(strategy.extended.worker_devices),
        num_replicas=int(strategy.num_replicas_in_sync),
        num_processes=num_processes,
        process_id=process_id,
        is_chief=is_chief,
        handle=strategy,
    )


def _model_jax_mesh(model):
    """The `keras.distribution.DeviceMesh` the model's variables live on, or
    `None` for single-device variables."""
    import jax

    sharding = getattr(model.weights[0].value, "sharding", None)
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return None
    mesh = sharding.mesh
    return keras.distribution.DeviceMesh(
        tuple(mesh.devices.shape), list(mesh.axis_names),
        devices=np.asarray(mesh.devices),
    )


def _built_outside(distribute, engine):
    return ValueError(
        f"This model's variables were not made by {engine}, so it cannot be "
        f"trained with distribute={distribute!r}. Build it inside the "
        f"scope: `with transfer.distribution_scope({distribute!r}): model = "
        "transfer.build_classifier(...)` (or `transfer.load_model(...)`), "
        "then call fit_recipe. Received: a model built outside "
        "transfer.distribution_scope"
    )


def plan_for_model(model, distribute):
    """The `DistributionPlan` that trains `model` as `distribute` asks.

    `distribute=None` follows the model: the plan it was built under, or no
    distribution. Checks before any training that the model's variables
    were made by the requested engine.

    Raises:
        ValueError: an unknown mode, a mode the backend lacks, or a model
            built outside (or under another) `distribution_scope`.
    """
    mode = None if distribute is None else check_distribute(distribute)
    backend = _backend.backend()
    if backend == "jax":
        mesh = _model_jax_mesh(model)
        found = "none" if mesh is None else (
            "data_parallel" if len(mesh.shape) == 1 else "model_parallel")
        if mode is None or mode == found:
            return NO_DISTRIBUTION if mesh is None else _jax_plan(
                found, None, None, mesh=mesh)
        if found == "none" and mode == "data_parallel" and len(
                keras.distribution.list_devices()) == 1:
            # One device: nothing to shard; JAX keeps variables on one
            # device whether or not they were made in a distribution scope.
            return _jax_plan(mode, None, None)
        if found == "none":
            raise _built_outside(distribute, "keras.distribution")
        raise ValueError(
            f"This model was built for distribute={found!r} (its variables "
            f"live on a {tuple(mesh.shape)} device mesh). Pass "
            f"distribute={found!r}, or rebuild it in "
            f"`transfer.distribution_scope({distribute!r})`. Received: "
            f"distribute={distribute!r}"
        )
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = model.distribute_strategy
        made_here = isinstance(strategy, tf.distribute.MirroredStrategy) or (
            isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy))
        made_here = made_here and all(
            strategy.extended.variable_created_in_scope(w.value)
            for w in model.weights
        )
        if mode is None:
            return _tf_plan(strategy=strategy) if made_here else NO_DISTRIBUTION
        if mode == "none":
            if made_here:
                raise ValueError(
                    "This model was built in a tf.distribute scope; train "
                    "it with distribute='data_parallel'. Received: "
                    "distribute='none'"
                )
            return NO_DISTRIBUTION
        _refuse_tf_model_parallel(mode, distribute)
        if not made_here:
            raise _built_outside(distribute, "tf.distribute.MirroredStrategy")
        return _tf_plan(strategy=strategy)
    if mode in (None, "none"):
        return NO_DISTRIBUTION
    raise ValueError(_TORCH_MESSAGE.format(
        version=keras.__version__, distribute=distribute))


def check_batches(plan, data, batch_size):
    """Refuses data that the plan's engine would fail on after a while.

    JAX shards every batch evenly over the replicas, and Keras's array
    adapter yields a last batch of `len % batch_size` samples; several
    processes need a `tf.data.Dataset` with a static batch size.
    """
    if plan.handle is None or data is None:
        return
    spec = getattr(data, "element_spec", None)
    if plan.num_processes > 1 and spec is not None:
        first = spec[0] if isinstance(spec, tuple) else spec
        if not first.shape.rank or first.shape[0] is None:
            raise ValueError(
                f"With {plan.num_processes} processes Keras splits each "
                "batch of the tf.data.Dataset by process and needs its size "
                "fixed: batch it with `drop_remainder=True`. Received: "
                f"element_spec={spec}"
            )
    if not isinstance(data, tuple):
        return
    if plan.num_processes > 1:
        raise ValueError(
            f"With {plan.num_processes} processes each one reads its own "
            "share of every batch, which Keras takes from a tf.data.Dataset "
            "only. Pass one (e.g. transfer.make_dataset(x, y, ...)) with the "
            "same seed in every process. Received: an (x, y) tuple"
        )
    if _backend.backend() != "jax" or isinstance(data[0], list):
        return
    remainder = len(data[0]) % batch_size
    if remainder % plan.num_replicas:
        raise ValueError(
            f"{len(data[0])} samples in batches of {batch_size} leave a last "
            f"batch of {remainder}, which does not split over "
            f"{plan.num_replicas} replicas. Use a sample count whose "
            f"remainder divides by {plan.num_replicas}, or pass a "
            "tf.data.Dataset batched with drop_remainder=True. Received: "
            f"{len(data[0])} samples, batch_size={batch_size}"
        )


def barrier(plan, name):
    """Waits until every process of `plan` reaches `name` (JAX, several
    processes; a no-op otherwise). TensorFlow's workers meet in their first
    collective step instead."""
    if plan.num_processes < 2 or _backend.backend() != "jax":
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def distribution_scope(distribute="data_parallel", *, devices=None,
                       model_shards=None):
    """Context manager to build a model for training on several devices.

    Build (and, in your own code, compile) the model inside it; then pass
    the same `distribute` to `fit_recipe`, which trains on the engine the
    model was built on. On JAX, call `keras.distribution.initialize()` in
    every process first when training on several processes or hosts; on
    TensorFlow, set `TF_CONFIG` on every worker for
    `MultiWorkerMirroredStrategy`.

    Args:
        distribute: `"data_parallel"` (every device holds the whole model
            and a slice of each batch), `"model_parallel"` (JAX only: each
            kernel's last axis is split over `model_shards` devices where it
            divides evenly, the batch over the rest) or `"none"`. Defaults
            to `"data_parallel"`.
        devices: the devices to use, as `keras.distribution.list_devices()`
            names them on JAX or TensorFlow device names on TensorFlow.
            Defaults to `None`: every accelerator, else every CPU device.
        model_shards: for `"model_parallel"`, how many devices one replica
            is split over; must divide the number of devices. Defaults to
            `None`: all of them.

    Yields:
        The `DistributionPlan`.

    Raises:
        ValueError: an unknown mode, model parallelism off JAX, any
            distribution on torch, or a bad `model_shards`.

    Example:

    >>> # The torch backend has no distribution API: it would raise.
    >>> on_torch = keras.backend.backend() == "torch"
    >>> mode = "none" if on_torch else "data_parallel"
    >>> with transfer.distribution_scope(mode) as plan:
    ...     model = transfer.build_classifier(
    ...         "small_cnn", 2, weights=None, image_size=32)
    >>> plan.mode == mode, plan.is_chief, plan.num_replicas >= 1
    (True, True, True)
    >>> # Then train on the same engine:
    >>> # transfer.fit_recipe(model, recipe, data, run_dir="runs/a",
    >>> #                     distribute=mode)
    """
    plan = make_plan(
        distribute, devices=devices, model_shards=model_shards)
    with plan.scope():
        yield plan


def worker_scratch(plan, run_dir):
    """A scratch run directory for a non-chief process, holding a copy of
    the chief's `run_dir/checkpoints` when it can read one (same host, or a
    filesystem every host sees), so that it resumes as the chief does.

    Call it before the processes' first barrier: after it the chief may
    write `run_dir`.
    """
    if run_dir_lib.is_finished(run_dir):
        run_dir_lib.check_run_dir(run_dir)  # raises: a finished run
    scratch = tempfile.mkdtemp(prefix=f"transfer-process{plan.process_id}-")
    logger.info(
        "Process %d of %d is not the chief: writing nothing to run_dir "
        "(scratch: %s)", plan.process_id, plan.num_processes, scratch,
    )
    source = run_dir_lib.path(run_dir, run_dir_lib.CHECKPOINTS)
    if os.path.exists(os.path.join(source, "run.json")):
        shutil.copytree(
            source, os.path.join(scratch, "run", run_dir_lib.CHECKPOINTS))
        logger.info("Resuming from a copy of the chief's '%s'", source)
    return scratch
