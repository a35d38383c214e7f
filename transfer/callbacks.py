"""Keras callbacks from `transfer`, for `fit_recipe` or your own `model.fit`.

A public namespace: the classes live in `transfer.tensorboard.callbacks`
(dashboard panels) and `transfer.training.checkpoints` (best weights).

```python
callbacks = [
    transfer.callbacks.EpochTensorBoard("logs"),
    transfer.callbacks.StageLogger("logs"),
    transfer.callbacks.ConfusionMatrixLogger((x_val, y_val), names, "logs"),
    transfer.callbacks.TopLossesLogger((x_val, y_val), names, "logs"),
]
model.fit(x, y, validation_data=(x_val, y_val), callbacks=callbacks)
```
"""

from transfer.tensorboard.callbacks import ConfusionMatrixLogger
from transfer.tensorboard.callbacks import EpochTensorBoard
from transfer.tensorboard.callbacks import HParamsLogger
from transfer.tensorboard.callbacks import InputImagesLogger
from transfer.tensorboard.callbacks import StageLogger
from transfer.tensorboard.callbacks import TopLossesLogger
from transfer.training.callbacks import default_callbacks
from transfer.training.checkpoints import BestWeightsCheckpoint

__all__ = [
    "BestWeightsCheckpoint",
    "ConfusionMatrixLogger",
    "EpochTensorBoard",
    "HParamsLogger",
    "InputImagesLogger",
    "StageLogger",
    "TopLossesLogger",
    "default_callbacks",
]
