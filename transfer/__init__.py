"""`transfer`: transfer learning for Keras 3, on TensorFlow, JAX and torch.

```python
model = transfer.build_classifier("efficientnet_b0", num_classes=5)   # a plain keras.Model
transfer.fit_recipe(model, transfer.two_stage_recipe(), train_ds, validation_data=val_ds, run_dir="runs/a")
model.save("flowers.keras")                                            # reload with keras.models.load_model
```

This module is the public API: re-exports only. The code is laid out in
layers that only point down (see "How the code is laid out" in the README):
`cli` -> `prediction`, `evaluation_data` -> `workflow` -> `training` ->
`models`, `data`, `tensorboard`, `reporting` -> `backbones`, `weights` ->
the `_` modules.
"""

from transfer import _startup
from transfer._version import __version__ as __version__

if _startup.defer_library():
    # The `transfer` command answers `--help` and `--version` without
    # importing Keras, then loads the library when a command runs (see
    # `transfer._startup`). An attribute asked for before that loads it.
    def __getattr__(name):
        return _startup.library_attribute(name)

else:
    # On JAX: the persistent compilation cache in the user cache directory
    # (off with TRANSFER_COMPILATION_CACHE=0; see `_backend`). On torch:
    # convolutions on channels-last views (off with
    # TRANSFER_TORCH_CHANNELS_LAST_VIEWS=0) and batch normalization in one
    # pass (off with TRANSFER_TORCH_AFFINE_BATCHNORM=0; see
    # `_torch_layout`). On JAX:
    # depthwise convolutions as shifted sums (off with
    # TRANSFER_JAX_FAST_CONVOLUTIONS=0; see `_jax_convolutions`). On
    # TensorFlow: Adam's update as one fused op per variable (off with
    # TRANSFER_TF_FUSED_ADAM=0; see `_tf_adam`). On JAX: no XLA program
    # for initial values that pretrained weights overwrite, zeros and ones
    # filled on the host (off with TRANSFER_JAX_LAZY_INIT=0; see
    # `_jax_init`). On torch: functional models let go of each
    # intermediate tensor after its last reader (off with
    # TRANSFER_TORCH_EARLY_RELEASE=0) and call simple float32 layers'
    # `call` directly (off with TRANSFER_TORCH_DIRECT_CALLS=0; see
    # `_torch_graph`). On TensorFlow on a CPU: no Grappler pass over each
    # new graph function (off with TRANSFER_TF_SKIP_GRAPPLER=0; see
    # `_tf_graph`). Everywhere: Keras's saving finds the attribute skip
    # sets it computed (off with TRANSFER_KERAS_SAVING_CACHE=0; see
    # `_keras_saving`).
    from transfer import _backend
    from transfer import _jax_convolutions
    from transfer import _jax_init
    from transfer import _keras_saving
    from transfer import _tf_adam
    from transfer import _tf_graph
    from transfer import _torch_graph
    from transfer import _torch_layout
    from transfer import backbones
    from transfer import calibration
    from transfer import callbacks
    from transfer import data
    from transfer import doctor
    from transfer import evaluation_data
    from transfer import export
    from transfer import models
    from transfer import prediction
    from transfer import pretraining
    from transfer import reporting
    from transfer import run_config
    from transfer import run_report
    from transfer import saving
    from transfer import tensorboard
    from transfer import text
    from transfer import training
    from transfer import weights
    from transfer import workflow
    from transfer.backbones.registry import list_backbones
    from transfer.backbones.registry import register_backbone
    from transfer.backbones.resolve import get_backbone_spec
    from transfer.backbones.spec import BackboneSpec
    from transfer.calibration import choose_reject_threshold
    from transfer.data.images import load_dataset
    from transfer.data.images import load_image_folder
    from transfer.data.images import make_dataset
    from transfer.data.images import synthetic_images
    from transfer.data.tables import load_image_csv
    from transfer.data.tables import load_image_table
    from transfer.doctor.inspect import inspect_data
    from transfer.models.classifier import build_backbone
    from transfer.models.classifier import build_classifier
    from transfer.models.classifier import fetch_weights
    from transfer.models.classifier import replace_head
    from transfer.models.freeze import FreezePlan
    from transfer.models.freeze import set_trainable_blocks
    from transfer.models.tasks import build_multilabel_classifier
    from transfer.models.tasks import build_regressor
    from transfer.models.tasks import choose_thresholds
    from transfer.models.tasks import predict_labels
    from transfer.models.text import build_text_classifier
    from transfer.pretraining.images import pretrain_images
    from transfer.reporting.report import write_report
    from transfer.saving import load_model
    from transfer.saving import save_model
    from transfer.training.callbacks import default_callbacks
    from transfer.training.checkpoints import NonFiniteLossError
    from transfer.training.distribute import DistributionPlan
    from transfer.training.engines import distribution_scope
    from transfer.training.fit import fit_recipe
    from transfer.training.lock import RunDirInUseError
    from transfer.training.lr_finder import LearningRateSweep
    from transfer.training.lr_finder import find_learning_rate
    from transfer.training.recipe import Recipe
    from transfer.training.recipe import Stage
    from transfer.training.recipe import two_stage_recipe
    from transfer.training.recipe_files import load_recipe
    from transfer.training.recipe_files import save_recipe
    from transfer.tta import evaluate_tta
    from transfer.tta import predict_tta
    from transfer.weights.download import WeightsUnavailableError

    _backend.configure_compilation_cache()
    _torch_layout.automatic()
    _torch_graph.automatic()
    _jax_convolutions.automatic()
    _jax_init.automatic()
    _tf_adam.automatic()
    _tf_graph.automatic()
    _keras_saving.automatic()

__all__ = [
    "BackboneSpec",
    "DistributionPlan",
    "FreezePlan",
    "LearningRateSweep",
    "NonFiniteLossError",
    "Recipe",
    "RunDirInUseError",
    "Stage",
    "WeightsUnavailableError",
    "backbones",
    "build_backbone",
    "build_classifier",
    "build_multilabel_classifier",
    "build_regressor",
    "build_text_classifier",
    "calibration",
    "callbacks",
    "choose_reject_threshold",
    "choose_thresholds",
    "data",
    "default_callbacks",
    "distribution_scope",
    "doctor",
    "evaluate_tta",
    "evaluation_data",
    "export",
    "fetch_weights",
    "find_learning_rate",
    "fit_recipe",
    "get_backbone_spec",
    "inspect_data",
    "list_backbones",
    "load_dataset",
    "load_image_csv",
    "load_image_folder",
    "load_image_table",
    "load_model",
    "load_recipe",
    "make_dataset",
    "models",
    "predict_labels",
    "predict_tta",
    "prediction",
    "pretrain_images",
    "pretraining",
    "register_backbone",
    "replace_head",
    "reporting",
    "run_config",
    "run_report",
    "save_model",
    "saving",
    "save_recipe",
    "set_trainable_blocks",
    "synthetic_images",
    "tensorboard",
    "text",
    "training",
    "two_stage_recipe",
    "weights",
    "workflow",
    "write_report",
]
