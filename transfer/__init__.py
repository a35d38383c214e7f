"""`transfer`: transfer learning for Keras 3, on TensorFlow, JAX and torch.

```python
model = transfer.build_classifier("efficientnet_b0", num_classes=5)   # a plain keras.Model
transfer.fit_recipe(model, transfer.two_stage_recipe(), train_ds, validation_data=val_ds, run_dir="runs/a")
model.save("flowers.keras")                                            # reload with keras.models.load_model
```
"""

from transfer import _startup

_startup.quiet_imports()

from transfer import callbacks
from transfer import deploy
from transfer import distribute
from transfer import feature_cache
from transfer import feature_store
from transfer import masked_lm
from transfer import preflight
from transfer import pretrain
from transfer import probes
from transfer import run_config
from transfer import run_report
from transfer import ssl
from transfer import text
from transfer import text_data
from transfer import workflow
from transfer.backbones import applications as _applications  # noqa: F401
from transfer.backbones import hub as _hub  # noqa: F401
from transfer.backbones import small as _small  # noqa: F401
from transfer.backbones.registry import get_backbone_spec
from transfer.backbones.registry import list_backbones
from transfer.backbones.registry import register_backbone
from transfer.backbones.spec import BackboneSpec
from transfer.callbacks import default_callbacks
from transfer.checkpoints import NonFiniteLossError
from transfer.data import load_dataset
from transfer.data import load_image_folder
from transfer.data import make_dataset
from transfer.data import synthetic_images
from transfer.distribute import DistributionPlan
from transfer.distribute import distribution_scope
from transfer.export import load_model
from transfer.export import save_model
from transfer.freeze import FreezePlan
from transfer.freeze import set_trainable_blocks
from transfer.image_csv import load_image_csv
from transfer.image_table import load_image_table
from transfer.lock import RunDirInUseError
from transfer.lr_finder import LearningRateSweep
from transfer.lr_finder import find_learning_rate
from transfer.models import build_backbone
from transfer.models import build_classifier
from transfer.models import fetch_weights
from transfer.models import replace_head
from transfer.pretrain import pretrain_images
from transfer.recipe import Recipe
from transfer.recipe import Stage
from transfer.recipe import fit_recipe
from transfer.recipe import two_stage_recipe
from transfer.recipe_files import load_recipe
from transfer.recipe_files import save_recipe
from transfer.report import write_report
from transfer.tasks import build_multilabel_classifier
from transfer.tasks import build_regressor
from transfer.tasks import choose_thresholds
from transfer.tasks import predict_labels
from transfer.text import build_text_classifier
from transfer.tta import evaluate_tta
from transfer.tta import predict_tta
from transfer.weights.download import WeightsUnavailableError

__version__ = "0.1.0"

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
    "build_backbone",
    "build_classifier",
    "build_multilabel_classifier",
    "build_regressor",
    "choose_thresholds",
    "build_text_classifier",
    "callbacks",
    "default_callbacks",
    "deploy",
    "distribute",
    "distribution_scope",
    "evaluate_tta",
    "feature_cache",
    "feature_store",
    "fetch_weights",
    "find_learning_rate",
    "fit_recipe",
    "load_recipe",
    "save_recipe",
    "get_backbone_spec",
    "list_backbones",
    "masked_lm",
    "load_dataset",
    "load_image_csv",
    "load_image_folder",
    "load_image_table",
    "load_model",
    "predict_labels",
    "predict_tta",
    "preflight",
    "make_dataset",
    "register_backbone",
    "replace_head",
    "run_config",
    "run_report",
    "save_model",
    "set_trainable_blocks",
    "synthetic_images",
    "text",
    "text_data",
    "two_stage_recipe",
    "workflow",
    "write_report",
    "pretrain",
    "pretrain_images",
    "probes",
    "ssl",
]
