"""One short `fit_recipe` run on N virtual CPU devices, for
tests/test_distribute.py (run in a subprocess: the device count must be set
before the backend starts).

    python tests/distributed_run.py RUN_DIR DEVICES DISTRIBUTE [MODEL_SHARDS]

Prints one JSON line: the manifest's stage metrics and distribution, and a
checksum of the final weights.
"""

import json
import os
import sys

devices = int(sys.argv[2])
backend = os.environ.get("KERAS_BACKEND", "tensorflow")
if backend == "jax":
    os.environ["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={devices}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

if backend == "tensorflow":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * devices)

import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # this checkout's transfer
import conftest  # noqa: E402,F401  (registers tiny_cnn)

import transfer  # noqa: E402


def main():
    run_dir, distribute = sys.argv[1], sys.argv[3]
    shards = int(sys.argv[4]) if len(sys.argv) > 4 else None
    keras.utils.set_random_seed(7)
    with transfer.distribution_scope(distribute, model_shards=shards) as plan:
        model = transfer.build_classifier(
            "tiny_cnn", 2, weights=None, dropout=0.0)
    x, y = transfer.synthetic_images(
        num_samples=16, image_size=32, num_classes=2, seed=0)
    recipe = transfer.Recipe(
        (transfer.Stage("head", 1, 1e-2, 0), transfer.Stage("top", 1, 5e-3, 1)))
    transfer.fit_recipe(
        model, recipe, (x, y), validation_data=(x, y), run_dir=run_dir,
        batch_size=8, verbose=0, distribute=distribute,
    )
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    weights = [np.asarray(w) for w in model.get_weights()]
    print(json.dumps({
        "plan": plan.to_dict(),
        "metrics": [s["metrics"] for s in manifest["stages"]],
        "distribution": manifest.get("distribution"),
        "weights_sum": float(sum(np.abs(w).sum() for w in weights)),
        "weights": [w.ravel()[:50].tolist() for w in weights],
    }))


if __name__ == "__main__":
    main()
