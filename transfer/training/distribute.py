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

The plans are plain data; the engines themselves (the code that branches
on the backend), `distribution_scope` and the non-chief processes' scratch
directories are in `transfer.training.engines`.
"""

import contextlib
import dataclasses
from typing import Any
from typing import Tuple

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

    Example:

    >>> with transfer.distribution_scope("none") as plan:
    ...     model = transfer.build_classifier(
    ...         "small_cnn", 2, weights=None, image_size=32)
    >>> isinstance(plan, transfer.DistributionPlan)
    True
    >>> plan.mode, plan.num_replicas, plan.is_chief
    ('none', 1, True)
    >>> plan.batch_plan(32)["per_device_batch"]
    32
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
