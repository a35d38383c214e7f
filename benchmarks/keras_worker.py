"""One backend's share of `benchmarks/run.py`; run by it in a subprocess.

    KERAS_BACKEND=jax python benchmarks/keras_worker.py config.json out.json

Measures, on the backend `KERAS_BACKEND` names:
- `time_to_first_step`: build EfficientNet-Lite0 with its real (offline)
  ImageNet weights, compile, one training step;
- `head_stage`: a 5-epoch head stage on Fashion-MNIST with EfficientNet-
  Lite0's real weights, the Keras-guide loop (`model.fit`, frozen backbone
  in the loop) against `transfer.fit_recipe` (features cached), wall time
  and test accuracy, cold (features computed and stored on disk) and warm
  (a rerun that loads them, `feature_cache_dir`);
- `fine_tune`: full fine-tune throughput of MobileNetV3Small (random init:
  it has no offline weights here; throughput does not depend on them),
  a hand-written `model.fit` against `fit_recipe`, and the same hand-written
  loop with each speed switch (`keras_convolutions`: Keras's own convolution
  paths instead of transfer's automatic ones on torch and JAX;
  `keras_layer_calls`: every layer through `Layer.__call__` on torch; bf16 mixed
  precision, a `tf.data` input
  pipeline, XLA on TensorFlow).
"""

import json
import os
import sys
import tempfile
import time

_STARTED = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import transfer  # noqa: E402
from transfer import _backend  # noqa: E402
from transfer import _jax_convolutions  # noqa: E402
from transfer import _torch_graph  # noqa: E402
from transfer import _torch_layout  # noqa: E402
from transfer.training import stage_options  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _STARTED


class EpochTimer(keras.callbacks.Callback):
    """Times every epoch, from one epoch end to the next, so each duration
    holds everything `fit` does per epoch (steps and callbacks). The first
    epoch (compile, warm-up) is left out; the median of the others gives
    the throughput, so one epoch slowed by a neighbour on a shared machine
    does not decide it."""

    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter())

    def images_per_second(self, images_per_epoch):
        if len(self.times) < 2:
            return None
        seconds = sorted(np.diff(self.times))
        return images_per_epoch / float(np.median(seconds))


def forward_flops(model):
    """Multiply-add FLOPs (x2) of one image through the convolutions and
    dense layers of `model` and its nested models."""
    total = 0
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * c * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1] // layer.groups
            total += 2 * h * w * c * kh * kw * c_in
        elif isinstance(layer, keras.layers.Dense):
            positions = int(np.prod(layer.output.shape[1:-1] or [1]))
            total += 2 * positions * layer.input.shape[-1] * layer.units
    return int(total)


def compile_model(model, jit_compile="auto", learning_rate=1e-4):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def _rgb(images, size):
    """uint8 (n, h, w) grayscale -> float32 (n, size, size, 3) in [0, 255]."""
    import tensorflow as tf

    out = []
    for start in range(0, len(images), 256):
        batch = tf.convert_to_tensor(images[start:start + 256, ..., None])
        batch = tf.image.resize(tf.cast(batch, "float32"), (size, size))
        out.append(tf.image.grayscale_to_rgb(batch).numpy())
    return np.concatenate(out)


def time_to_first_step(config):
    started = time.perf_counter()
    model = transfer.build_classifier(
        "efficientnet_lite0", 10, image_size=config["head_image_size"]
    )
    built = time.perf_counter()
    transfer.set_trainable_blocks(model, "all")
    compile_model(model)
    x = np.random.default_rng(0).uniform(
        0, 255, (config["batch_size"], *model.input_shape[1:])
    ).astype("float32")
    y = np.zeros(len(x), "int32")
    # What `fit_recipe` does before `fit` (on TensorFlow: the optimizer's
    # and metrics' variables first, so the step is traced once);
    # `"build_before_fit": false` measures Keras alone.
    prebuilt = config.get("build_before_fit", True) and (
        stage_options.build_before_fit(model, x, y))
    model.train_on_batch(x, y)
    done = time.perf_counter()
    keras.backend.clear_session()
    return {
        "time_to_first_step_s": round(done - started, 2),
        "build_and_load_weights_s": round(built - started, 2),
        "compile_and_first_step_s": round(done - built, 2),
        "built_before_fit": bool(prebuilt),
        "import_s": round(IMPORT_SECONDS, 2),
        "model": "efficientnet_lite0 (real ImageNet weights, offline)",
    }


def head_stage(config, work_dir):
    size, epochs = config["head_image_size"], config["head_epochs"]
    data = transfer.load_dataset(
        "fashion_mnist", labels_per_class=config["labels_per_class"]
    )
    x, y = _rgb(data.x_train, size), data.y_train
    n_test = config["test_images"]
    x_test, y_test = _rgb(data.x_test[:n_test], size), data.y_test[:n_test]

    naive = transfer.build_classifier("efficientnet_lite0", 10, image_size=size)
    cached = transfer.build_classifier("efficientnet_lite0", 10, image_size=size)
    warm = transfer.build_classifier("efficientnet_lite0", 10, image_size=size)
    cached.set_weights(naive.get_weights())
    warm.set_weights(naive.get_weights())
    compile_model(naive, learning_rate=1e-3)  # as the stage below
    started = time.perf_counter()
    naive.fit(x, y, batch_size=config["batch_size"], epochs=epochs,
              shuffle=True, verbose=0)
    naive_s = time.perf_counter() - started
    # Cold: the disk cache is empty, features are computed and stored.
    # Warm: a rerun with a fresh identical model loads them.
    feature_cache_dir = os.path.join(work_dir, "features")
    seconds, caches = {}, {}
    for name, model in (("cached", cached), ("warm", warm)):
        started = time.perf_counter()
        transfer.fit_recipe(
            model, [transfer.Stage("head", epochs, 1e-3, 0)], (x, y),
            run_dir=os.path.join(work_dir, f"head_{name}"),
            batch_size=config["batch_size"], verbose=0,
            feature_cache_dir=feature_cache_dir,
        )
        seconds[name] = time.perf_counter() - started
        path = os.path.join(work_dir, f"head_{name}", "manifest.json")
        with open(path) as f:
            caches[name] = json.load(f)["stages"][0]["feature_cache"]
    inference = _backbone_inference(
        cached, x, caches["cached"]["inference_batch_size"])
    feature_pass_ips = (
        caches["cached"]["train_samples"] / caches["cached"]["compute_seconds"]
        if caches["cached"]["compute_seconds"] else None)
    accuracy = {}
    for name, model in (("naive", naive), ("cached", cached), ("warm", warm)):
        logits = model.predict(x_test, batch_size=64, verbose=0)
        accuracy[name] = float(np.mean(logits.argmax(-1) == y_test))
    keras.backend.clear_session()
    cached_s, warm_s = seconds["cached"], seconds["warm"]
    return {
        "model": "efficientnet_lite0 (real ImageNet weights, offline)",
        "data": f"fashion_mnist, {len(x)} train / {len(x_test)} test images, "
                f"{size} px",
        "epochs": epochs,
        "naive_s": round(naive_s, 2),
        "cached_s": round(cached_s, 2),
        "warm_s": round(warm_s, 2),
        "feature_cache": caches["cached"],
        "feature_cache_warm": caches["warm"],
        "naive_accuracy": accuracy["naive"],
        "cached_accuracy": accuracy["cached"],
        "warm_accuracy": accuracy["warm"],
        "feature_pass_images_per_s": _round(feature_pass_ips, 1),
        "backbone_inference_images_per_s": round(inference["warm"], 1),
        "backbone_inference_cold_images_per_s": round(inference["cold"], 1),
        "inference_batch_size": inference["batch_size"],
        "feature_pass_fraction_of_inference": _round(
            feature_pass_ips and feature_pass_ips / inference["warm"], 3),
        "feature_pass_fraction_of_cold_inference": _round(
            feature_pass_ips and feature_pass_ips / inference["cold"], 3),
        "head_stage_speedup": round(naive_s / cached_s, 2),
        "head_stage_speedup_warm": round(naive_s / warm_s, 2),
        "head_stage_accuracy_delta": round(
            100 * (accuracy["cached"] - accuracy["naive"]), 2
        ),
    }


def _round(value, digits):
    return None if value is None else round(value, digits)


def _backbone_inference(model, x, batch_size):
    """The frozen backbone's own inference throughput on `x` (images/s):
    `predict` of a fresh feature model (inputs -> `pooler`) at the feature
    pass's batch, `cold` (first call, tracing included, as the feature
    pass pays it) and `warm` (the second call)."""
    feature_model = keras.Model(model.inputs, model.get_layer("pooler").output)
    result = {"batch_size": batch_size}
    for name in ("cold", "warm"):
        started = time.perf_counter()
        feature_model.predict(x, batch_size=batch_size, verbose=0)
        result[name] = len(x) / (time.perf_counter() - started)
    return result


def _fine_tune_model(config):
    model = transfer.build_classifier(
        "mobilenet_v3_small", 10, weights=None,
        image_size=config["image_size"],
    )
    transfer.set_trainable_blocks(model, "all")
    return model


def _hand_written(config, x, y, variant):
    """Throughput of a hand-written `model.fit` with one speed switch."""
    if variant == "mixed_bfloat16":
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    if variant == "keras_convolutions":
        # Without transfer's automatic convolution paths (channels-last
        # views on torch, shifted-sum depthwise on JAX), as plain Keras.
        _torch_layout.use_channels_last_views(False)
        _jax_convolutions.use_fast_convolutions(False)
    if variant == "keras_layer_calls":
        # Every layer through `Layer.__call__`, as plain Keras on torch.
        _torch_graph.use_direct_calls(False)
    try:
        model = _fine_tune_model(config)
        # What `model.compile()` gives a user: Keras's "auto" (XLA on JAX,
        # its only compiled path; off on TensorFlow and torch on a CPU). Not
        # `False`: on JAX that runs the step op by op, unjitted (20.9 img/s
        # against 58 jitted in the 2026-12-03 quick run on 2 cores).
        compile_model(model, jit_compile=True if variant == "xla" else "auto")
        timer = EpochTimer()
        if variant == "tf_data":
            import tensorflow as tf

            ds = (tf.data.Dataset.from_tensor_slices((x, y))
                  .cache().shuffle(len(x)).batch(config["batch_size"])
                  .prefetch(tf.data.AUTOTUNE))
            model.fit(ds, epochs=config["epochs"], callbacks=[timer],
                      verbose=0)
        else:
            model.fit(x, y, batch_size=config["batch_size"],
                      epochs=config["epochs"], shuffle=True,
                      callbacks=[timer], verbose=0)
        return timer.images_per_second(len(x)), model
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
        _torch_layout.automatic()
        _torch_graph.automatic()
        _jax_convolutions.automatic()


def fine_tune(config, work_dir):
    # Epochs long enough that a fixed per-epoch cost (checkpoint, backup,
    # logs) weighs as it does in real training; JAX on CPU is ~10x slower,
    # so it gets fewer steps.
    steps = config.get("steps_per_epoch_by_backend", {}).get(
        keras.config.backend(), config["steps_per_epoch"])
    batch = config["batch_size"]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (steps * batch, config["image_size"],
                             config["image_size"], 3)).astype("float32")
    y = rng.integers(0, 10, len(x)).astype("int32")
    results = {"hand_written_ips": [], "transfer_ips": []}
    flops = None
    for repeat in range(config["repeats"]):
        ips, model = _hand_written(config, x, y, "default")
        flops = forward_flops(model)
        results["hand_written_ips"].append(ips)
        keras.backend.clear_session()
        model = _fine_tune_model(config)
        timer = EpochTimer()
        transfer.fit_recipe(
            model, [transfer.Stage("fine_tune", config["epochs"], 1e-4, "all")],
            (x, y), run_dir=os.path.join(work_dir, f"fine_tune_{repeat}"),
            batch_size=batch, callbacks=[timer], verbose=0,
        )
        results["transfer_ips"].append(timer.images_per_second(len(x)))
        keras.backend.clear_session()
    hand = float(np.median(results["hand_written_ips"]))
    ours = float(np.median(results["transfer_ips"]))
    switches = {"default": hand}
    # The switches run on fewer steps: some are 10x slower (XLA on CPU).
    few = min(len(x), config["switch_steps"] * batch)
    for variant in config["switches"].get(keras.config.backend(), []):
        switches[variant] = _hand_written(config, x[:few], y[:few], variant)[0]
        keras.backend.clear_session()
    if few < len(x):
        switches["default"] = _hand_written(config, x[:few], y[:few],
                                            "default")[0]
        keras.backend.clear_session()
    return {
        "model": "mobilenet_v3_small (random init: no offline weights; "
                 "throughput does not depend on them)",
        "image_size": config["image_size"],
        "batch_size": batch,
        "images_per_epoch": len(x),
        "epochs": config["epochs"],
        "forward_gflops_per_image": round(flops / 1e9, 4),
        **{k: [round(v, 1) for v in vals] for k, vals in results.items()},
        "hand_written_images_per_s": round(hand, 1),
        "transfer_images_per_s": round(ours, 1),
        "fit_overhead_ratio": round(ours / hand, 3),
        # Seconds `fit_recipe` adds per epoch (backups, checkpoint, logs):
        # a fixed cost, so the ratio nears 1 as epochs get longer.
        "fit_overhead_s_per_epoch": round(len(x) / ours - len(x) / hand, 2),
        # Training ~ 3 forward passes (forward, gradients of activations
        # and of weights).
        "achieved_gflops": round(3 * flops * ours / 1e9, 2),
        "switches_images_per_s": {k: round(v, 1) for k, v in switches.items()},
    }


def main(config_path, output_path):
    with open(config_path) as f:
        config = json.load(f)
    keras.utils.set_random_seed(0)
    result = {"backend": keras.config.backend(),
              "versions": _backend.framework_versions()}
    with tempfile.TemporaryDirectory() as work_dir:
        for name, step in (("first_step", time_to_first_step),
                           ("head_stage", head_stage),
                           ("fine_tune", fine_tune)):
            if name not in config["parts"]:
                continue
            started = time.perf_counter()
            result[name] = (step(config) if name == "first_step"
                            else step(config, work_dir))
            result[name]["part_seconds"] = round(
                time.perf_counter() - started, 1)
            with open(output_path, "w") as f:  # partial results survive
                json.dump(result, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
