"""A short three-stage `fit_recipe` run, for kill-and-resume tests.

Run the same command again after killing it and the run resumes. Every
epoch that starts or ends is appended (with this process's PID) to
`--log`, outside or inside the run directory; `--pause-after-epoch E`
writes `<run_dir>.reached-E` after epoch E's backup and then waits to be
killed; `--pause-in-epoch E` does the same after the first batch of epoch
E, mid-epoch. `--fail-write K` makes the K-th file commit (`os.replace`,
which ends every file `transfer` writes) fail with ENOSPC, as a full disk
would; the number of commits is logged at the end (`PID writes N`).
`--folder DIR` trains on an image folder (`load_image_folder`, with
`--seed` and `--image-size`) instead of arrays. On success the final
metrics are printed as JSON.

    KERAS_BACKEND=jax python benchmarks/resume_job.py runs/a --log a.log
"""

import argparse
import errno
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import transfer  # noqa: E402

STAGES = (("head", 2, 1e-2, 0), ("middle", 2, 5e-3, 1), ("all", 2, 2e-3, "all"))


def _tiny_cnn(weights, input_shape):
    inputs = keras.Input(input_shape)
    x = inputs
    for name, filters, strides in (("stem", 8, 1), ("block1", 12, 2),
                                   ("block2", 16, 2)):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                                use_bias=False, name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return keras.Model(inputs, x, name="tiny_cnn"), {"weights": None,
                                                     "source": "benchmarks"}


transfer.register_backbone(transfer.BackboneSpec(
    name="tiny_cnn", source="benchmarks", builder=_tiny_cnn, image_size=32,
    min_image_size=16, scale=1.0 / 255.0,
    blocks=("^stem_", "^block1_", "^block2_"), weights=(),
    description="3 conv blocks for kill-and-resume tests",
), override=True)


class EpochLog(keras.callbacks.Callback):
    def __init__(self, path, marker, pause_after, pause_in):
        super().__init__()
        self.path, self.marker = path, marker
        self.pause_after, self.pause_in = pause_after, pause_in
        self.epoch = None

    def _write(self, text):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()} {text}\n")
            f.flush()
            os.fsync(f.fileno())

    def _pause(self, epoch):
        with open(f"{self.marker}.reached-{epoch}", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._write(f"begin {epoch}")

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0 and self.epoch == self.pause_in:
            self._pause(self.epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._write(f"end {epoch}")
        if epoch == self.pause_after:
            self._pause(epoch)


class FullDisk:
    """`os.replace` whose `fail`-th call raises ENOSPC (logged with the file
    it would have written); counts the calls."""

    def __init__(self, fail, log):
        self.fail, self.log, self.count, self.real = fail, log, 0, os.replace

    def __call__(self, source, target, *args, **kwargs):
        self.count += 1
        if self.count == self.fail:
            self.log._write(f"fail {os.path.basename(str(target))}")
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real(source, target, *args, **kwargs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--log", required=True)
    parser.add_argument("--pause-after-epoch", type=int, default=None)
    parser.add_argument("--pause-in-epoch", type=int, default=None)
    parser.add_argument("--fail-write", type=int, default=None)
    parser.add_argument("--folder", default=None)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    keras.utils.set_random_seed(1337)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0,
                                      image_size=args.image_size)
    if args.folder:
        train, validation, names = transfer.load_image_folder(
            args.folder, image_size=args.image_size, batch_size=8,
            validation_split=0.25, seed=args.seed, verbose=0)
    else:
        x, y = transfer.synthetic_images(32, 32, 2, seed=0)
        # No shuffling: a resumed run sees the batches an uninterrupted one
        # does.
        train = validation = transfer.make_dataset(
            x, y, image_size=32, batch_size=8)
        names = ["a", "b"]
    callback = EpochLog(args.log, args.run_dir.rstrip("/"),
                        args.pause_after_epoch, args.pause_in_epoch)
    disk = FullDisk(args.fail_write, callback)
    os.replace = disk
    try:
        histories = transfer.fit_recipe(
            model, [transfer.Stage(*s) for s in STAGES], train,
            validation_data=validation, run_dir=args.run_dir,
            callbacks=[callback], class_names=names, verbose=0,
        )
    finally:
        os.replace = disk.real
        callback._write(f"writes {disk.count}")
    print(json.dumps({k: v[-1] for k, v in histories[-1].history.items()}))


if __name__ == "__main__":
    main()
