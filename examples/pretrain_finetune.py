"""Self-supervised pretraining on unlabelled images, then fine-tuning, offline.

With no arguments: `small_cnn` (a small plain CNN, no pretrained weights) is
pretrained from scratch with SimCLR (`transfer.pretrain_images`) on the
unlabelled Fashion-MNIST training images (labels dropped; scikit-learn's
digits when Fashion-MNIST is not installed), at 32 px. Then, with 10 and 100
labelled images per class (the same seeded split for every model), each of

- `ssl`: the SimCLR-pretrained `small_cnn`,
- `random`: the same `small_cnn` from random init,
- `imagenet`: EfficientNet-Lite0 with real ImageNet weights (64 px),

gets a linear probe (logistic regression on frozen pooled features) and a
two-stage fine-tune (`transfer.two_stage_recipe`: the same epochs, learning
rates and batch size for all), scored on the same test images.

    python examples/pretrain_finetune.py
    python examples/pretrain_finetune.py --quick
    tensorboard --logdir runs/pretrain_finetune-<stamp>

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
from transfer.pretraining import images as pretrain
from transfer.pretraining import probes  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["auto", "fashion_mnist", "digits"],
                        default="auto")
    parser.add_argument("--backbone", default="small_cnn",
                        help="backbone pretrained from scratch")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--imagenet-size", type=int, default=64,
                        help="image size of EfficientNet-Lite0")
    parser.add_argument("--pretrain-images", type=int, default=30000,
                        help="unlabelled training images used (at most)")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--pretrain-batch-size", type=int, default=128)
    parser.add_argument("--labels-per-class", default="10,100")
    parser.add_argument("--epochs", default="3,8",
                        help="HEAD,FINETUNE epochs of the two stages")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--no-imagenet", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="a minute-scale smoke run: tiny budgets")
    parser.add_argument("--output", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_images = min(args.pretrain_images, 1024)
        args.pretrain_epochs = 1
        args.labels_per_class = "10"
        args.epochs = "1,1"
        args.test_images = min(args.test_images, 200)
        args.imagenet_size = 32
    args.labels = [int(n) for n in args.labels_per_class.split(",")]
    args.head_epochs, args.finetune_epochs = (int(n) for n in args.epochs.split(","))
    return args


def load_data(args):
    name = args.dataset
    if name == "auto":
        name = "fashion_mnist" if data_lib.fashion_mnist_available() else "digits"
    ds = transfer.load_dataset(name, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    unlabelled = ds.x_train[rng.permutation(len(ds.x_train))[:args.pretrain_images]]
    test = rng.permutation(len(ds.x_test))[:args.test_images]
    # The k-NN probe's holdout: 1,000 labelled training images (it only
    # watches pretraining; the test images stay unseen).
    holdout = rng.permutation(len(ds.x_train))[:1000]
    splits = {}
    for labels in args.labels:
        keep = []
        for label in range(len(ds.class_names)):
            members = np.flatnonzero(ds.y_train == label)
            keep.extend(np.random.default_rng(args.seed).choice(
                members, labels, replace=False))
        keep = np.random.default_rng(args.seed).permutation(keep)
        splits[labels] = (ds.x_train[keep], ds.y_train[keep])
    return {
        "name": name, "unlabelled": unlabelled, "splits": splits,
        "holdout": (ds.x_train[holdout], ds.y_train[holdout]),
        "test": (ds.x_test[test], ds.y_test[test]),
        "num_classes": len(ds.class_names),
    }


def at_size(images_labels, size):
    images, labels = images_labels
    return pretrain.image_array(images, size), labels


def finetune_batch_size(num_images):
    """32, or less so that an epoch has at least 10 steps (10 labels per
    class: 100 images in batches of 10): a few steps per epoch would leave
    the new head barely trained."""
    return max(2, min(32, num_images // 10))


def evaluate(backbone, weights, size, data, args, run_dir):
    """Linear probe and two-stage fine-tune for each labelled split."""
    probe, finetune = {}, {}
    test = at_size(data["test"], size)
    for labels, split in data["splits"].items():
        train = at_size(split, size)
        keras.utils.set_random_seed(args.seed)
        model = transfer.build_classifier(
            backbone, data["num_classes"], weights=weights, image_size=size)
        probe[str(labels)] = round(
            probes.linear_probe_accuracy(model, train, test), 4)
        recipe = transfer.two_stage_recipe(args.head_epochs, args.finetune_epochs)
        transfer.fit_recipe(
            model, recipe, train, run_dir=os.path.join(run_dir, f"{labels}"),
            batch_size=finetune_batch_size(len(train[1])), verbose=0)
        predictions = model.predict(test[0], batch_size=256, verbose=0)
        finetune[str(labels)] = round(
            float((predictions.argmax(-1) == test[1]).mean()), 4)
        print(f"  {labels} labels/class: probe {probe[str(labels)]:.4f}, "
              f"fine-tune {finetune[str(labels)]:.4f}", flush=True)
        keras.utils.clear_session()
    return probe, finetune


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    keras.utils.set_random_seed(args.seed)
    run_dir = os.path.join(args.output,
                           f"pretrain_finetune-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"Backend {keras.config.backend()}, run dir {run_dir}", flush=True)
    started = time.perf_counter()
    data = load_data(args)
    print(f"Data: {data['name']}, {len(data['unlabelled'])} unlabelled images, "
          f"{len(data['test'][1])} test images", flush=True)

    pretrained = transfer.pretrain_images(
        data["unlabelled"], run_dir=os.path.join(run_dir, "pretrain"),
        backbone=args.backbone, image_size=args.image_size,
        epochs=args.pretrain_epochs, batch_size=args.pretrain_batch_size,
        holdout=at_size(data["holdout"], args.image_size),
    )
    pretrain_seconds = pretrained["seconds"]
    print(f"Pretrained {args.backbone} in {pretrain_seconds:.0f} s; k-NN probe "
          f"by epoch: {pretrained['probe']}", flush=True)

    results = {}
    for name, backbone, weights, size in (
        ("ssl", pretrained["backbone"], "file", args.image_size),
        ("random", args.backbone, None, args.image_size),
        ("imagenet", "efficientnet_lite0", "imagenet", args.imagenet_size),
    ):
        if name == "imagenet" and args.no_imagenet:
            results[name] = (None, None)
            continue
        print(f"{name}: {backbone}", flush=True)
        results[name] = evaluate(backbone, weights, size, data, args,
                                 os.path.join(run_dir, name))

    result = {
        "backend": keras.config.backend(),
        "backbone": args.backbone,
        "dataset": data["name"],
        "image_size": args.image_size,
        "unlabelled_images": len(data["unlabelled"]),
        "pretrain_epochs": args.pretrain_epochs,
        "pretrain_seconds": pretrain_seconds,
        "knn_accuracy_by_epoch": pretrained["probe"],
        "labels_per_class": args.labels,
        "finetune_epochs": [args.head_epochs, args.finetune_epochs],
        "test_images": len(data["test"][1]),
        "ssl_probe_accuracy": results["ssl"][0],
        "random_probe_accuracy": results["random"][0],
        "imagenet_probe_accuracy": results["imagenet"][0],
        "ssl_finetune_accuracy": results["ssl"][1],
        "random_finetune_accuracy": results["random"][1],
        "imagenet_finetune_accuracy": results["imagenet"][1],
        "imagenet_image_size": args.imagenet_size,
        "seconds": round(time.perf_counter() - started, 1),
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "run_dir": run_dir,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
