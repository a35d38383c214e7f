"""Which self-supervised objective to ship: SimCLR vs SimSiam, measured.

Same backbone (`small_cnn`, random init), same unlabelled Fashion-MNIST
training images, same augmentations, same epochs and batch size; then the
leave-one-out 10-NN accuracy and a logistic-regression linear probe of the
pooled features (100 labels per class to fit, test images to score).
Random init is the floor. SimSiam (Chen & He, 2021) is implemented here, on
top of `transfer.pretraining.contrastive.ContrastivePretrainer`: a predictor MLP and a
stop-gradient, negative cosine loss, no negatives.

    python benchmarks/ssl_objectives.py --images 10000 --epochs 3

Prints one JSON object per objective; the last line holds all of them.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import transfer  # noqa: E402
from transfer.pretraining import images as pretrain
from transfer.pretraining import probes  # noqa: E402
from transfer.pretraining.contrastive import ContrastivePretrainer  # noqa: E402


class SimSiamPretrainer(ContrastivePretrainer):
    """SimSiam: predict one view's projection from the other's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.predictor_hidden = keras.layers.Dense(32, activation="relu")
        self.predictor = keras.layers.Dense(self.projection_dim)

    def build(self, input_shape):
        super().build(input_shape)
        self.predictor_hidden.build((None, self.projection_dim))
        self.predictor.build((None, 32))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        z1, z2 = y_pred[:, 0], y_pred[:, 1]
        p1 = self.predictor(self.predictor_hidden(z1))
        p2 = self.predictor(self.predictor_hidden(z2))

        def distance(p, z):
            p = ops.normalize(p, axis=-1)
            z = ops.normalize(ops.stop_gradient(z), axis=-1)
            return -ops.mean(ops.sum(p * z, axis=-1))

        loss = 0.5 * distance(p1, z2) + 0.5 * distance(p2, z1)
        self.accuracy_tracker.update_state(0.0)
        return loss


def evaluate(model, labelled, test):
    knn = probes._knn_accuracy(probes.embed(model, test[0]), test[1], 10)
    return knn, probes.linear_probe_accuracy(model, labelled, test)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--test", type=int, default=2000)
    args = parser.parse_args(argv)
    data = transfer.load_dataset("fashion_mnist")
    rng = np.random.default_rng(0)
    pool = pretrain.image_array(data.x_train[rng.permutation(60000)[:args.images]], 32)
    small = transfer.load_dataset("fashion_mnist", labels_per_class=100)
    labelled = (pretrain.image_array(small.x_train, 32), small.y_train)
    test = (pretrain.image_array(data.x_test[:args.test], 32), data.y_test[:args.test])
    results = []
    for objective, cls in (("random_init", None), ("simclr", ContrastivePretrainer),
                           ("simsiam", SimSiamPretrainer)):
        keras.utils.set_random_seed(0)
        backbone, spec, _ = transfer.build_backbone("small_cnn", weights=None)
        model = (cls or ContrastivePretrainer)(
            backbone, pretrain.default_augmentation(32, seed=0),
            scale=spec.scale, offset=spec.offset)
        started = time.perf_counter()
        if cls is not None:
            model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
                1e-3, args.epochs * (len(pool) // args.batch_size))))
            model.fit(pool, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
        else:
            model(pool[:2])
        seconds = time.perf_counter() - started
        knn, linear = evaluate(model, labelled, test)
        result = {"objective": objective, "knn_accuracy": round(knn, 4),
                  "linear_probe_accuracy": round(linear, 4),
                  "pretrain_seconds": round(seconds, 1),
                  "images": args.images, "epochs": args.epochs,
                  "batch_size": args.batch_size,
                  "backend": keras.config.backend(),
                  "loadavg": open("/proc/loadavg").read().split()[:3]}
        print(json.dumps(result), flush=True)
        results.append(result)
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
