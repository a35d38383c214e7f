"""Your own training loop: `transfer` builds the model, Keras does the rest.

`transfer.build_classifier` returns a plain `keras.Model`. Here user code
freezes it with `transfer.set_trainable_blocks`, then compiles and fits it
with its own optimizer, loss, metrics and callbacks; no `fit_recipe`.

    python examples/custom_fit.py                    # EfficientNet-Lite0, digits
    python examples/custom_fit.py --backbone mobilenet_v3_small --weights none
"""

import argparse
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import transfer  # noqa: E402


class StopAtAccuracy(keras.callbacks.Callback):
    """A user's own callback: stop once training accuracy is high enough."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def on_epoch_end(self, epoch, logs=None):
        if (logs or {}).get("accuracy", 0.0) >= self.target:
            self.model.stop_training = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet", help="'imagenet' or 'none'")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output", default=None, help="where model.keras goes")
    args = parser.parse_args(argv)
    weights = None if args.weights.lower() == "none" else args.weights

    data = transfer.load_dataset("digits", labels_per_class=20, seed=0)
    train = transfer.make_dataset(data.x_train, data.y_train, image_size=args.image_size,
                                  batch_size=32, shuffle=True, seed=0)
    test = transfer.make_dataset(data.x_test, data.y_test, image_size=args.image_size,
                                 batch_size=64)

    model = transfer.build_classifier(args.backbone, 10, weights=weights,
                                      image_size=args.image_size)
    plan = transfer.set_trainable_blocks(model, 1)  # head + top block
    print(plan)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    output = args.output or tempfile.mkdtemp(prefix="custom_fit-")
    log_dir = os.path.join(output, "logs")
    # transfer's TensorBoard callbacks sit beside Keras's, on the same log_dir.
    history = model.fit(
        train, validation_data=test, epochs=args.epochs, verbose=2,
        callbacks=[
            StopAtAccuracy(0.99),
            keras.callbacks.TensorBoard(log_dir),
            transfer.callbacks.StageLogger(log_dir, freeze_plan=plan),
            transfer.callbacks.ConfusionMatrixLogger(test, data.class_names, log_dir),
            transfer.callbacks.TopLossesLogger(test, data.class_names, log_dir),
        ],
    )
    print(f"TensorBoard: tensorboard --logdir {log_dir}")
    path = os.path.join(output, "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    images = next(iter(test))[0]
    same = np.allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0),
                       atol=1e-4)
    _, accuracy = model.evaluate(test, verbose=0)
    print(json.dumps({"backend": keras.config.backend(), "backbone": args.backbone,
                      "epochs": len(history.epoch), "test_accuracy": round(float(accuracy), 4),
                      "reload_matches": bool(same), "model": path}))


if __name__ == "__main__":
    main()
