"""Self-supervised pretraining on unlabelled images, then fine-tuning, offline.

With no arguments: `small_cnn` (a small plain CNN, no pretrained weights) is
pretrained from scratch with SimCLR (`transfer.pretrain_images`) on the
unlabelled Fashion-MNIST training images (labels dropped; scikit-learn's
digits when Fashion-MNIST is not installed), at 32 px. Then, with 10 and 100
labelled images per class (the same seeded split for every model), each of

- `simclr`: the SimCLR-pretrained `small_cnn`,
- `random`: the same `small_cnn` from random init,
- `imagenet`: EfficientNet-Lite0 with real ImageNet weights (64 px),

gets a linear probe (logistic regression on frozen pooled features) and a
two-stage fine-tune (`transfer.two_stage_recipe`: the same epochs, learning
rates and batch size for all), scored on the same test images.

`--method mae` pretrains with masked image modelling instead, which needs a
vision transformer: the backbone is then `small_vit` (KerasHub's
`ViTBackbone` in a small configuration: patch 4, 4 layers, width 64;
random init, no pretrained weights). `--method mae,simclr` pretrains the
same backbone both ways, so the two compare on the same splits and budget
(images, epochs, batch size); `--seeds 0,1` repeats everything per seed
(the seed draws the unlabelled, labelled and test images and every init).

    python examples/pretrain_finetune.py
    python examples/pretrain_finetune.py --quick
    python examples/pretrain_finetune.py --method mae,simclr --seeds 0,1 --no-imagenet \
        --pretrain-images 8000 --pretrain-epochs mae=12,simclr=4
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
from transfer.pretraining import images as pretrain  # noqa: E402
from transfer.pretraining import probes  # noqa: E402

METHODS = ("simclr", "mae")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["auto", "fashion_mnist", "digits"],
                        default="auto")
    parser.add_argument("--method", default="simclr",
                        help="pretraining methods, comma-separated: simclr, "
                             "mae (vision transformers)")
    parser.add_argument("--backbone", default=None,
                        help="backbone pretrained from scratch (default: "
                             "small_vit with mae, else small_cnn)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--imagenet-size", type=int, default=64,
                        help="image size of EfficientNet-Lite0")
    parser.add_argument("--pretrain-images", type=int, default=30000,
                        help="unlabelled training images used (at most)")
    parser.add_argument("--pretrain-epochs", default="2",
                        help="epochs of every method, or per method: "
                             "mae=12,simclr=4 (the same compute: an MAE "
                             "epoch encodes a quarter of the patches, once)")
    parser.add_argument("--pretrain-batch-size", type=int, default=128)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--pooling", default="avg",
                        help="pooling of every model's probe and head (avg: "
                             "mean of the patch tokens for a ViT)")
    parser.add_argument("--labels-per-class", default="10,100")
    parser.add_argument("--epochs", default="3,8",
                        help="HEAD,FINETUNE epochs of the two stages")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--no-imagenet", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="a minute-scale smoke run: tiny budgets")
    parser.add_argument("--output", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds to repeat the whole "
                             "measurement with (default: --seed)")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.method.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        parser.error(f"--method takes {', '.join(METHODS)} (comma-separated);"
                     f" received {args.method!r}")
    try:
        epochs = dict(item.split("=") if "=" in item else ("*", item)
                      for item in args.pretrain_epochs.split(","))
        args.pretrain_epochs = {method: int(epochs.get(method, epochs.get("*")))
                                for method in args.methods}
    except (TypeError, ValueError):
        parser.error("--pretrain-epochs takes N or METHOD=N,... (e.g. "
                     f"mae=12,simclr=4); received {args.pretrain_epochs!r}")
    if args.backbone is None:
        args.backbone = "small_vit" if "mae" in args.methods else "small_cnn"
    args.seeds = ([int(n) for n in args.seeds.split(",")]
                  if args.seeds else [args.seed])
    if args.quick:
        args.pretrain_images = min(args.pretrain_images, 1024)
        args.pretrain_epochs = dict.fromkeys(args.methods, 1)
        args.labels_per_class = "10"
        args.epochs = "1,1"
        args.test_images = min(args.test_images, 200)
        args.imagenet_size = 32
    args.labels = [int(n) for n in args.labels_per_class.split(",")]
    args.head_epochs, args.finetune_epochs = (int(n) for n in args.epochs.split(","))
    return args


def load_data(args, seed):
    name = args.dataset
    if name == "auto":
        name = "fashion_mnist" if data_lib.fashion_mnist_available() else "digits"
    ds = transfer.load_dataset(name, seed=seed)
    rng = np.random.default_rng(seed)
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
            keep.extend(np.random.default_rng(seed).choice(
                members, labels, replace=False))
        keep = np.random.default_rng(seed).permutation(keep)
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


def evaluate(backbone, weights, size, data, args, run_dir, seed):
    """Linear probe and two-stage fine-tune for each labelled split."""
    probe, finetune = {}, {}
    test = at_size(data["test"], size)
    for labels, split in data["splits"].items():
        train = at_size(split, size)
        keras.utils.set_random_seed(seed)
        model = transfer.build_classifier(
            backbone, data["num_classes"], weights=weights, image_size=size,
            pooling=args.pooling)
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


def measure(args, seed, run_dir):
    """Pretrains with each method, then probes and fine-tunes every model."""
    keras.utils.set_random_seed(seed)
    data = load_data(args, seed)
    print(f"Seed {seed}. Data: {data['name']}, {len(data['unlabelled'])} "
          f"unlabelled images, {len(data['test'][1])} test images", flush=True)
    models, seconds, knn = [], {}, {}
    for method in args.methods:
        keras.utils.set_random_seed(seed)
        pretrained = transfer.pretrain_images(
            data["unlabelled"], run_dir=os.path.join(run_dir, method),
            backbone=args.backbone, image_size=args.image_size,
            epochs=args.pretrain_epochs[method],
            batch_size=args.pretrain_batch_size,
            holdout=at_size(data["holdout"], args.image_size),
            method=method, mask_ratio=args.mask_ratio,
        )
        seconds[method] = pretrained["seconds"]
        knn[method] = pretrained["probe"]
        print(f"Pretrained {args.backbone} with {method} in "
              f"{seconds[method]:.0f} s; k-NN probe by epoch: "
              f"{pretrained['probe']}", flush=True)
        models.append((method, pretrained["backbone"], "file",
                       args.image_size))
        keras.utils.clear_session()
    models.append(("random", args.backbone, None, args.image_size))
    if not args.no_imagenet:
        models.append(("imagenet", "efficientnet_lite0", "imagenet",
                       args.imagenet_size))
    probe, finetune = {}, {}
    for name, backbone, weights, size in models:
        print(f"{name}: {backbone}", flush=True)
        probe[name], finetune[name] = evaluate(
            backbone, weights, size, data, args,
            os.path.join(run_dir, f"{name}-finetune"), seed)
    return {"seed": seed, "dataset": data["name"],
            "unlabelled_images": len(data["unlabelled"]),
            "test_images": len(data["test"][1]),
            "pretrain_seconds": seconds, "knn_accuracy_by_epoch": knn,
            "probe_accuracy": probe, "finetune_accuracy": finetune}


def mean_over_seeds(runs, key):
    """{model: {labels: mean accuracy}} over the runs."""
    first = runs[0][key]
    return {
        model: {labels: round(float(np.mean(
            [run[key][model][labels] for run in runs])), 4)
            for labels in first[model]}
        for model in first
    }


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    run_dir = os.path.join(args.output,
                           f"pretrain_finetune-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"Backend {keras.config.backend()}, run dir {run_dir}", flush=True)
    started = time.perf_counter()
    runs = [measure(args, seed, os.path.join(run_dir, f"seed{seed}"))
            for seed in args.seeds]
    result = {
        "backend": keras.config.backend(),
        "backbone": args.backbone,
        "methods": args.methods,
        "dataset": runs[0]["dataset"],
        "image_size": args.image_size,
        "unlabelled_images": runs[0]["unlabelled_images"],
        "pretrain_epochs": args.pretrain_epochs,
        "pretrain_batch_size": args.pretrain_batch_size,
        "mask_ratio": args.mask_ratio if "mae" in args.methods else None,
        "pooling": args.pooling,
        "labels_per_class": args.labels,
        "finetune_epochs": [args.head_epochs, args.finetune_epochs],
        "test_images": runs[0]["test_images"],
        "imagenet_image_size": None if args.no_imagenet else args.imagenet_size,
        "seeds": args.seeds,
        "runs": runs,
        "mean_probe_accuracy": mean_over_seeds(runs, "probe_accuracy"),
        "mean_finetune_accuracy": mean_over_seeds(runs, "finetune_accuracy"),
        "mean_pretrain_seconds": {
            method: round(float(np.mean(
                [run["pretrain_seconds"][method] for run in runs])), 1)
            for method in args.methods},
        "seconds": round(time.perf_counter() - started, 1),
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "run_dir": run_dir,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
