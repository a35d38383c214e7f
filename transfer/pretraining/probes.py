"""Representation probes: how good are a backbone's frozen features?

`RepresentationProbe` logs a leave-one-out k-NN accuracy during
self-supervised pretraining; `linear_probe_accuracy` fits a linear
classifier on frozen pooled features, the usual evaluation of
self-supervised representations (no fine-tuning).
"""

import logging
import os

import keras
import numpy as np

from transfer.tensorboard import summaries

logger = logging.getLogger(__name__)


def _knn_accuracy(features, labels, k):
    """Leave-one-out k-NN accuracy with cosine similarity."""
    f = features / np.maximum(
        np.linalg.norm(features, axis=1, keepdims=True), 1e-12
    )
    similarity = f @ f.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1)[:, :k]
    votes = labels[neighbours]
    num_classes = int(labels.max()) + 1
    counts = np.stack([(votes == c).sum(1) for c in range(num_classes)], 1)
    return float((counts.argmax(1) == labels).mean())


def embed(model, images, *, batch_size=256):
    """Pooled backbone features of images, as a NumPy array.

    Args:
        model: a `ContrastivePretrainer`, or a classifier from
            `build_classifier` (its `pooler` output is used).
        images: `(n, size, size, 3)` images in `[0, 255]`.
        batch_size: images per forward pass. Defaults to `256`.
    """
    if hasattr(model, "features"):
        return np.concatenate([
            keras.ops.convert_to_numpy(
                model.features(images[i : i + batch_size], training=False)
            )
            for i in range(0, len(images), batch_size)
        ])
    extractor = keras.Model(model.inputs, model.get_layer("pooler").output)
    return extractor.predict(images, batch_size=batch_size, verbose=0)


def linear_probe_accuracy(model, train, test):
    """Test accuracy of a linear classifier on frozen pooled features.

    Standardized features and scikit-learn's `LogisticRegression`: the
    usual linear probe of representation quality, with no fine-tuning.

    Args:
        model: as for `embed`.
        train: `(images, labels)` to fit the probe.
        test: `(images, labels)` to score it.

    Returns:
        The accuracy on `test`, a float.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probe.fit(embed(model, train[0]), np.asarray(train[1]))
    return float(probe.score(embed(model, test[0]), np.asarray(test[1])))


class RepresentationProbe(keras.callbacks.Callback):
    """Leave-one-out k-NN accuracy of the pooled features on a labelled set.

    A cheap measure of representation quality during self-supervised
    pretraining: at the start of training and after every epoch, embeds
    `holdout` with `model.features` and classifies each image by its `k`
    nearest neighbours (cosine) among the others. Logged to TensorBoard as
    `epoch_knn_accuracy` in `log_dir/probe`, and kept in `history` as
    `(epoch, accuracy)` pairs, starting with the weights training starts
    from (`-1` for a fresh run, the last finished epoch for a resumed one).

    Args:
        holdout: `(images, labels)` arrays, images as the model takes them.
        log_dir: TensorBoard log directory. Defaults to `"logs"`.
        k: neighbours that vote. Defaults to `10`.
    """

    def __init__(self, holdout, log_dir="logs", k=10):
        super().__init__()
        self.holdout = holdout
        self.log_dir = log_dir
        self.k = k
        self.history = []

    def measure(self):
        images, labels = self.holdout
        return _knn_accuracy(embed(self.model, images), labels, self.k)

    def on_train_begin(self, logs=None):
        self._writer = summaries.EventWriter(os.path.join(self.log_dir, "probe"))

    def on_epoch_begin(self, epoch, logs=None):
        if not self.history:  # the starting point (resumed: its last epoch)
            self.history.append((epoch - 1, self.measure()))

    def on_epoch_end(self, epoch, logs=None):
        accuracy = self.measure()
        self.history.append((epoch, accuracy))
        logger.info("Epoch %d: k-NN probe accuracy %.4f", epoch, accuracy)
        self._writer.scalar(
            "epoch_knn_accuracy", accuracy, step=epoch,
            description=f"Leave-one-out {self.k}-NN accuracy of the pooled "
                        "backbone features on the labelled holdout.",
        )
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._writer.close()
