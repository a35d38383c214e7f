"""One backend's share of `benchmarks/run.py --device gpu`; run by it in a
subprocess.

    KERAS_BACKEND=jax python benchmarks/gpu_worker.py check in.json out.json
    KERAS_BACKEND=jax python benchmarks/gpu_worker.py fine_tune in.json out.json

`check`: what the backend computes on, its framework versions and, where it
sees no GPU, what is missing (a CPU-only build, or a CUDA build that lists
no device). `fine_tune`: full fine-tune images per second of
EfficientNet-Lite0 (random init, the architecture of
`torch_compile_peer.py`; throughput does not depend on the weights) with
`model.fit` on in-memory arrays, in float32 and mixed_bfloat16, with
`jit_compile` as Keras's `"auto"` resolves it on this backend, then with
`jit_compile=True` where that differs. Each row is written to the output as
soon as it is measured; a row that would not end before `config["deadline"]`
(a Unix time) is skipped, and the output says so.
"""

import importlib.metadata
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_worker  # noqa: E402  (EpochTimer, compile_model, forward_flops)
import numpy as np  # noqa: E402

import transfer  # noqa: E402
from transfer import _backend  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")


def missing_gpu():
    """Why this backend computes on no GPU, or None when it has one."""
    if _backend.accelerator() == "gpu":
        return None
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # `tf.test.is_built_with_cuda()` says True for tensorflow-cpu too.
        try:
            cpu = importlib.metadata.version("tensorflow-cpu")
            cpu = f"; the package tensorflow-cpu {cpu} is installed"
        except importlib.metadata.PackageNotFoundError:
            cpu = ""
        return (f"tensorflow {tf.__version__} lists no GPU "
                f"(tf.config.list_physical_devices('GPU') is empty{cpu}): "
                "install its CUDA build (pip install 'tensorflow[and-cuda]'), "
                "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")
    if backend == "jax":
        import jax

        try:
            jax.devices("gpu")
            reason = f"its default device is {jax.devices()[0].platform}"
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[0]
        return (f"jax {jax.__version__} has no GPU ({reason}): install "
                "jax's CUDA plugin (pip install 'jax[cuda12]', or cuda13 "
                "for a CUDA 13 driver)")
    import torch

    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build: install a "
                "CUDA build of torch")
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no "
            "GPU (torch.cuda.is_available() is False): check the driver "
            "(nvidia-smi) and CUDA_VISIBLE_DEVICES")


def check(config, output_path):
    result = {"backend": keras.config.backend(),
              "accelerator": _backend.accelerator(),
              "missing": missing_gpu(),
              "versions": _backend.framework_versions()}
    _write(output_path, result)


def _row(config, x, y, precision, jit_compile):
    """One fine-tune throughput measurement, as a JSON-ready dict."""
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    model = transfer.build_classifier(
        "efficientnet_lite0", 10, weights=None,
        image_size=config["image_size"], precision=precision)
    transfer.set_trainable_blocks(model, "all")
    keras_worker.compile_model(model, jit_compile=jit_compile)
    timer = keras_worker.EpochTimer()
    history = model.fit(x, y, batch_size=config["batch_size"],
                        epochs=config["epochs"], shuffle=False,
                        callbacks=[timer], verbose=0)
    images_per_s = timer.images_per_second(len(x))
    row = {
        "precision": precision,
        "jit_compile_requested": jit_compile,
        "jit_compile": bool(model.jit_compile),
        "images_per_s": None if images_per_s is None
        else round(images_per_s, 1),
        # Build, compile (tracing, XLA or torch.compile) and one epoch.
        "first_epoch_s": round(timer.times[0] - started, 1),
        "forward_gflops_per_image": round(
            keras_worker.forward_flops(model) / 1e9, 4),
        "final_loss_finite": bool(np.isfinite(history.history["loss"][-1])),
        "seconds": round(time.perf_counter() - started, 1),
    }
    keras.backend.clear_session()
    return row


def fine_tune(config, output_path):
    result = {"backend": keras.config.backend(),
              "accelerator": _backend.accelerator(),
              "versions": _backend.framework_versions(),
              "model": "efficientnet_lite0 (random init; throughput does "
                       "not depend on the weights)",
              "input": "model.fit on in-memory float32 arrays, not shuffled",
              "image_size": config["image_size"],
              "batch_size": config["batch_size"],
              "images_per_epoch": config["steps_per_epoch"]
              * config["batch_size"],
              "epochs": config["epochs"], "rows": []}
    if config.get("require_gpu") and result["accelerator"] != "gpu":
        raise SystemExit(f"{result['backend']}: {missing_gpu()}")
    size = config["image_size"]
    rng = np.random.default_rng(0)
    x = rng.random((result["images_per_epoch"], size, size, 3),
                   dtype=np.float32) * 255
    y = rng.integers(0, 10, len(x)).astype("int32")
    plan = [(precision, "auto") for precision in PRECISIONS]
    took = {}
    while plan:
        precision, jit = plan.pop(0)
        # A row costs about what the last one with the same setting did.
        estimate = took.get(jit, max(took.values(), default=0))
        left = config["deadline"] - time.time()
        if estimate > left:
            result["rows"].append({
                "precision": precision, "jit_compile_requested": jit,
                "skipped": f"time budget: {left:.0f} s left, a row like it "
                           f"took {estimate:.0f} s"})
        else:
            row = _row(config, x, y, precision, jit)
            took[jit] = max(took.get(jit, 0), row["seconds"])
            result["rows"].append(row)
            # Keras's default left XLA / torch.compile off: measure it on.
            if jit == "auto" and not row["jit_compile"]:
                plan.append((precision, True))
        _write(output_path, result)  # partial results survive a kill


def _write(path, result):
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    part, config_path, output_path = sys.argv[1:4]
    with open(config_path) as f:
        loaded = json.load(f)
    {"check": check, "fine_tune": fine_tune}[part](loaded, output_path)
