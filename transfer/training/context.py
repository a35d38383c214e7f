"""`StageContext`: what the stage loop of `fit_recipe` needs, in one value.

`fit_recipe` checks its arguments, then gathers them here once; the stage
loop (`transfer.training.stages`), its callbacks
(`transfer.training.callbacks`) and the finished run's files
(`transfer.training.run_dir`) read them from this object instead of
passing a dozen arguments down.
"""

import dataclasses
from typing import Any
from typing import Optional

from transfer import _backend
from transfer import _inputs
from transfer import _model_info
from transfer.models.text import check_text_inputs
from transfer.training import run_dir as run_dir_lib


@dataclasses.dataclass
class StageContext:
    """One run of `fit_recipe`, as the stage loop sees it.

    Args:
        model: the `keras.Model` being trained.
        recipe: the `transfer.Recipe`.
        run: the `transfer.training.resume.RunState` of the run directory.
        train_data: training data, as `fit_recipe` takes it.
        validation_data: validation data, or `None`.
        batch_size: batch size for array data.
        callbacks: the user's extra callbacks.
        class_names: class names, or `None`.
        verbose: passed to `model.fit`.
        profile_batch: TensorBoard profiling batches (TensorFlow only).
        preflight: the training folder's `PreflightReport`, or `None`.
        distribution: the engine and batch plan for the manifest, or `None`.
        cache_features: `"auto"`, `True` or `False`.
        feature_cache_dir: the disk feature cache, or `None`.
    """

    model: Any
    recipe: Any
    run: Any
    train_data: Any
    validation_data: Any = None
    batch_size: int = 32
    callbacks: Optional[list] = None
    class_names: Optional[list] = None
    verbose: Any = "auto"
    profile_batch: Any = 0
    preflight: Any = None
    distribution: Optional[dict] = None
    cache_features: Any = "auto"
    feature_cache_dir: Optional[str] = None

    def __post_init__(self):
        model = self.model
        self.self_supervised = _model_info.is_self_supervised(model)
        self.task = (
            "masked_lm" if _model_info.is_masked_lm(model)
            else _model_info.model_task(model)
        )
        self.is_image = (
            _model_info.metadata(model).get("modality", "image") == "image"
        )
        self.num_classes = (
            None if self.self_supervised else model.output_shape[-1]
        )
        for where, data in (("train_data", self.train_data),
                            ("validation_data", self.validation_data)):
            if not self.is_image and isinstance(data, tuple) and len(data) == 2:
                # Before anything trains: pairs for a pair model, and back.
                check_text_inputs(model, data[0], f"the x of {where}")
        self.fit_kwargs = _inputs.fit_kwargs(
            self.train_data, self.batch_size, shuffle=True
        )
        validation = self.validation_data
        if isinstance(validation, tuple) and _inputs.is_text_input(
            validation[0]
        ):
            # (texts, labels) become the tf.data pipeline KerasHub tokenizes.
            self.validation_data = _inputs.fit_kwargs(
                validation, self.batch_size, False
            )["x"]
        self.steps_per_epoch = _inputs.steps_per_epoch(
            self.train_data, self.batch_size
        )
        jit = self.recipe.jit_compile
        # What `model.compile` gets: "auto" resolved per backend and device.
        self.jit_compile = _backend.auto_jit_compile() if jit == "auto" else jit

    @property
    def run_dir(self):
        return self.run.run_dir

    @property
    def log_dir(self):
        return run_dir_lib.path(self.run.run_dir, run_dir_lib.LOGS)

    @property
    def best_weights_path(self):
        return run_dir_lib.path(self.run.run_dir, run_dir_lib.BEST_WEIGHTS)

    @property
    def classifier(self):
        """Whether the model classifies (confusion matrices make sense)."""
        return self.task == "classification" and not self.self_supervised
