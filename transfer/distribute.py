"""Data- and model-parallel training on the engines Keras already has.

`transfer` builds no engine of its own. On JAX it uses Keras's distribution
API (`keras.distribution.DataParallel`, `keras.distribution.ModelParallel`;
`keras.distribution.initialize()` for several processes or hosts). On
TensorFlow it uses `tf.distribute.MirroredStrategy` on one host and
`tf.distribute.MultiWorkerMirroredStrategy` across hosts (`TF_CONFIG`). Keras
3's torch backend has no distribution API: asking for one there is refused
with that reason.

The model must be built where its variables will live, so build it inside
`distribution_scope`, then train it with `fit_recipe`:

```python
with transfer.distribution_scope("data_parallel"):
    model = transfer.build_classifier("efficientnet_b0", num_classes=5)
transfer.fit_recipe(model, recipe, train_ds, run_dir="runs/a",
                    distribute="data_parallel")
```

The engines themselves (the code that branches on the backend) are in
`transfer.engines`.
"""

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from typing import Any
from typing import Tuple

logger = logging.getLogger(__name__)

MODES = ("none", "data_parallel", "model_parallel")

# The learning-rate rule `fit_recipe` applies, recorded in the manifest.
LR_SCALING = (
    "none: a stage's learning_rate applies to the global batch as written. "
    "Keep the global batch when adding devices (the per-device batch "
    "shrinks) and the recipe stays valid; if you grow the global batch k "
    "times, scale the learning rates k times yourself (linear rule)."
)


def check_distribute(distribute):
    """`distribute` as one of `MODES` (`None` -> `"none"`).

    Raises:
        ValueError: `distribute` is not one of `MODES`.
    """
    if distribute is None:
        return "none"
    mode = distribute.replace("-", "_") if isinstance(distribute, str) else None
    if mode not in MODES:
        raise ValueError(
            f"`distribute` must be None or one of {MODES}. "
            f"Received: distribute={distribute!r}"
        )
    return mode


@dataclasses.dataclass(frozen=True)
class DistributionPlan:
    """Where training runs: the engine, its devices and this process's role.

    Returned by `distribution_scope`; `fit_recipe` records it in the
    manifest. Only the chief process (`process_id` 0, or TensorFlow's chief
    worker) writes the run directory.

    Args:
        mode: one of `"none"`, `"data_parallel"`, `"model_parallel"`.
        engine: the Keras or TensorFlow class doing the work.
        devices: the devices, as the engine names them.
        num_replicas: model replicas; each gets `global_batch /
            num_replicas` samples per step.
        model_shards: devices each replica's variables are split over.
        num_processes: processes (hosts) taking part.
        process_id: this process's number, from `0`.
        is_chief: whether this process writes the run directory.
        handle: the engine object (a `keras.distribution.Distribution`, a
            `tf.distribute.Strategy` or `None`).
    """

    mode: str
    engine: str
    devices: Tuple[str, ...]
    num_replicas: int = 1
    model_shards: int = 1
    num_processes: int = 1
    process_id: int = 0
    is_chief: bool = True
    handle: Any = dataclasses.field(default=None, compare=False, repr=False)

    @contextlib.contextmanager
    def scope(self):
        """Makes the engine current: variables made here are placed by it."""
        if self.handle is None:
            yield
        else:
            with self.handle.scope():
                yield

    def batch_plan(self, global_batch):
        """The batch sizes of one step, and the learning-rate rule.

        Raises:
            ValueError: `global_batch` does not split evenly over the
                replicas or processes.
        """
        for count, what in ((self.num_replicas, "replicas"),
                            (self.num_processes, "processes")):
            if global_batch % count:
                raise ValueError(
                    f"The global batch of {global_batch} does not split "
                    f"evenly over {count} {what} ({self.mode} on "
                    f"{self.engine}). Pass a batch_size (or batch the "
                    f"dataset) to a multiple of {count}. Received: "
                    f"batch_size={global_batch}"
                )
        return {
            "global_batch": int(global_batch),
            "per_device_batch": int(global_batch // self.num_replicas),
            "per_process_batch": int(global_batch // self.num_processes),
            "learning_rate_scaling": LR_SCALING,
        }

    def to_dict(self):
        return {
            f.name: list(getattr(self, f.name)) if f.name == "devices"
            else getattr(self, f.name)
            for f in dataclasses.fields(self) if f.name != "handle"
        }


NO_DISTRIBUTION = DistributionPlan("none", "none", ())


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

    >>> with transfer.distribution_scope("data_parallel") as plan:
    ...     model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    >>> plan.num_replicas >= 1
    True
    """
    from transfer import engines

    plan = engines.make_plan(
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
    from transfer import resume

    if os.path.exists(os.path.join(run_dir, "manifest.json")):
        resume.check_run_dir(run_dir)  # raises: a finished run
    scratch = tempfile.mkdtemp(prefix=f"transfer-process{plan.process_id}-")
    logger.info(
        "Process %d of %d is not the chief: writing nothing to run_dir "
        "(scratch: %s)", plan.process_id, plan.num_processes, scratch,
    )
    source = os.path.join(run_dir, resume.CHECKPOINTS)
    if os.path.exists(os.path.join(source, "run.json")):
        shutil.copytree(
            source, os.path.join(scratch, "run", resume.CHECKPOINTS))
        logger.info("Resuming from a copy of the chief's '%s'", source)
    return scratch


def fit_as_worker(plan, scratch, model, recipe, train_data, validation_data,
                  **kwargs):
    """Trains a non-chief process's share without writing `run_dir`.

    Every process must run the same computations (stages, epochs, callback
    predictions), so a non-chief one runs the same stage loop into
    `scratch` (from `worker_scratch`), removed afterwards.
    """
    from transfer import resume
    from transfer import stages

    try:
        with plan.scope():
            run = resume.RunState.open(
                os.path.join(scratch, "run"), model, recipe,
                batch_size=kwargs["batch_size"],
                class_names=kwargs["class_names"],
            )
            return stages.fit_stages(
                model, recipe, run, train_data, validation_data,
                profile_batch=0, preflight=None,
                # The chief's mode: the same choices (no feature cache).
                distribution=plan.to_dict(), **kwargs,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
