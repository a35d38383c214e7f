"""`ReconstructionLogger`: what masked image pretraining sees and rebuilds."""

import os

import keras
import numpy as np

from transfer.reporting import plots
from transfer.tensorboard import summaries


class ReconstructionLogger(keras.callbacks.Callback):
    """Logs original, masked and reconstructed images after every epoch.

    For a `transfer.pretraining.masked_images.MaskedImagePretrainer`: the
    same `images` with the same masks (drawn from `seed`) every epoch, so
    the grid shows how reconstructions improve. Rows: the originals, the
    encoder's input (hidden patches grey), the reconstructions (visible
    patches pasted back). Written as image `reconstructions` in
    `log_dir/reconstructions`.

    Args:
        images: `(n, size, size, 3)` images in `[0, 255]`, a few (8).
        log_dir: the TensorBoard log directory. Defaults to `"logs"`.
        seed: seed of the masks. Defaults to `0`.
    """

    def __init__(self, images, log_dir="logs", seed=0):
        super().__init__()
        self.images = np.asarray(images)
        self.log_dir = log_dir
        self.seed = seed

    def on_train_begin(self, logs=None):
        self._writer = summaries.EventWriter(
            os.path.join(self.log_dir, "reconstructions"))

    def grid(self):
        """The `uint8` grid image: originals, masked, reconstructed."""
        masked, reconstructed = self.model.reconstruct(self.images, self.seed)
        original = np.clip(self.images, 0, 255).astype("uint8")
        return plots.image_grid(
            np.concatenate([original, masked, reconstructed]),
            columns=len(self.images))

    def on_epoch_end(self, epoch, logs=None):
        self._writer.image(
            "reconstructions", self.grid(), epoch,
            description="Rows: original images, the encoder's input (hidden "
                        "patches grey), reconstructions (visible patches "
                        "pasted back). Same images and masks every epoch.",
        )
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._writer.close()
