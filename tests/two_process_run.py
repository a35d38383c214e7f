"""One process of a two-process JAX `fit_recipe` run on 127.0.0.1, for
tests/test_distribute.py.

    KERAS_BACKEND=jax python tests/two_process_run.py RUN_DIR PORT PROCESS_ID [crash]

Prints one JSON line: this process's plan, and the run's outcome. With
`crash`, a two-stage recipe raises after its first epoch (run it again
without `crash` to resume); the test runs the one-stage recipe only."""

import json
import logging
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # this checkout's transfer


class Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("simulated crash")


def main():
    run_dir, port, process_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    keras.distribution.initialize(
        job_addresses=f"127.0.0.1:{port}", num_processes=2,
        process_id=process_id)
    import conftest  # noqa: F401  (registers tiny_cnn)

    import transfer

    keras.utils.set_random_seed(7)
    with transfer.distribution_scope("data_parallel") as plan:
        model = transfer.build_classifier(
            "tiny_cnn", 2, weights=None, dropout=0.0)
    x, y = transfer.synthetic_images(
        num_samples=16, image_size=32, num_classes=2, seed=0)
    import tensorflow as tf

    # Every process reads the same, identically shuffled dataset; Keras
    # shards each global batch of 8 by process (4 each). Keras needs the
    # batch size static: drop_remainder=True.
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        16, seed=0).batch(8, drop_remainder=True)
    stages = [transfer.Stage("head", 1, 1e-2, 0)]
    callbacks = []
    if len(sys.argv) > 4:
        stages.append(transfer.Stage("top", 1, 5e-3, 1))
        if sys.argv[4] == "crash":
            callbacks.append(Crash())
    recipe = transfer.Recipe(tuple(stages))
    result = {"plan": plan.to_dict(), "pid": os.getpid()}
    try:
        transfer.fit_recipe(model, recipe, data, run_dir=run_dir, verbose=0,
                            distribute="data_parallel", callbacks=callbacks)
        result["outcome"] = "finished"
        result["weights_sum"] = float(
            sum(abs(w).sum() for w in model.get_weights()))
    except Exception as e:  # report it: the test shows the exact error
        result["outcome"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
