"""Short `fit_recipe` runs on virtual CPU devices, for
tests/test_distribute.py. Run it in a subprocess: the device count must be
fixed before the backend starts.

    KERAS_BACKEND=jax python tests/distributed_run.py OUT_DIR DEVICES CONFIG...

CONFIG is `one` (no distribution: one device, the reference), `all` (data-parallel on
every device), `resume` (as `all`, killed by an exception after the first
epoch, then rerun) or `model` (JAX: model-parallel, kernels split over 2
devices). Prints one JSON line: per config, the manifest's stage metrics and
distribution, and the final weights.
"""

import json
import os
import sys

DEVICES = int(sys.argv[2])
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={DEVICES}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

if BACKEND == "tensorflow":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * DEVICES)

import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # this checkout's transfer
import conftest  # noqa: E402,F401  (registers tiny_cnn)

import transfer  # noqa: E402

RECIPE = transfer.Recipe(
    (transfer.Stage("head", 1, 1e-2, 0), transfer.Stage("top", 1, 5e-3, 1)))


class Crash(keras.callbacks.Callback):
    """Raises after the first epoch's backup, like a killed process."""

    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("simulated crash")


def first_devices(count):
    if BACKEND == "jax":
        return keras.distribution.list_devices()[:count]
    return [d.name for d in tf.config.list_logical_devices("CPU")][:count]


def run(out_dir, config):
    keras.utils.set_random_seed(7)
    mode = {"one": "none", "model": "model_parallel"}.get(
        config, "data_parallel")
    devices = first_devices(DEVICES)
    shards = 2 if config == "model" else None
    with transfer.distribution_scope(
            mode, devices=devices, model_shards=shards) as plan:
        model = transfer.build_classifier(
            "tiny_cnn", 2, weights=None, dropout=0.0)
    x, y = transfer.synthetic_images(
        num_samples=16, image_size=32, num_classes=2, seed=0)
    run_dir = os.path.join(out_dir, config)
    kwargs = dict(validation_data=(x, y), run_dir=run_dir, batch_size=8,
                  verbose=0, distribute=mode)
    crashed = None
    if config == "resume":
        try:
            transfer.fit_recipe(model, RECIPE, (x, y), callbacks=[Crash()],
                                **kwargs)
        except RuntimeError as e:
            crashed = str(e)
    transfer.fit_recipe(model, RECIPE, (x, y), **kwargs)
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    split = 0
    if BACKEND == "jax":
        split = sum(not w.value.sharding.is_fully_replicated
                    for w in model.weights)
    weights = [np.asarray(w) for w in model.get_weights()]
    keras.backend.clear_session()
    return {
        "plan": plan.to_dict(),
        "crashed": crashed,
        "attempts": manifest["attempts"],
        "metrics": [s["metrics"] for s in manifest["stages"]],
        "resumed": [s["resumed_after_epoch"] for s in manifest["stages"]],
        "distribution": manifest.get("distribution"),
        "feature_cache": [s.get("feature_cache") for s in manifest["stages"]],
        "split_variables": int(split),
        "weights": [w.ravel().tolist() for w in weights],
    }


def main():
    out_dir = sys.argv[1]
    print(json.dumps({c: run(out_dir, c) for c in sys.argv[3:]}))


if __name__ == "__main__":
    main()
