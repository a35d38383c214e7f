"""How many training images per second the host's input pipeline makes.

The example's training pipeline (`transfer.make_dataset`: gray to RGB,
resize, `keras.layers` augmentation) on Fashion-MNIST (digits when it is not
installed), iterated without a model. Data-parallel training needs this
rate to be at least devices x per-device training rate; README "Scaling
out" uses it to size the next step. With `--folder`, the pipeline of an
image folder instead (`transfer.load_image_folder`: JPEG/PNG decode and
resize, no split, no augmentation), as `benchmarks/scale.py` uses it.
Prints one JSON object.

    python benchmarks/input_pipeline.py --image-size 96 --images 2000
    python benchmarks/input_pipeline.py --folder runs/scale_data/train-10000
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import transfer  # noqa: E402
from transfer.data import images as data_lib  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folder", help="an image folder (one subfolder "
                        "per class) to read instead of arrays; --images "
                        "is then ignored")
    args = parser.parse_args(argv)
    if args.folder:
        train, _, _ = transfer.load_image_folder(
            args.folder, image_size=args.image_size,
            batch_size=args.batch_size, validation_split=0, shuffle=False,
            verbose=0)
        name, num_images = args.folder, len(train.file_paths)
    else:
        name = ("fashion_mnist" if data_lib.fashion_mnist_available()
                else "digits")
        ds = transfer.load_dataset(name)
        x, y = ds.x_train[: args.images], ds.y_train[: args.images]
        num_images = len(y)
        train = transfer.make_dataset(
            x, y, image_size=args.image_size, batch_size=args.batch_size,
            shuffle=True, augment=data_lib.default_augmentation(seed=0),
            seed=0)
    rates = []
    for _ in range(args.epochs):
        started, count = time.perf_counter(), 0
        for images, _ in train:
            count += int(images.shape[0])
        rates.append(count / (time.perf_counter() - started))
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(json.dumps({
        "dataset": name, "images": num_images, "image_size": args.image_size,
        "batch_size": args.batch_size, "cpu_count": os.cpu_count(),
        "images_per_second": [round(r, 1) for r in rates],
        "best_images_per_second": round(float(np.max(rates)), 1),
        "loadavg": load,
    }))


if __name__ == "__main__":
    main()
