"""Precision policies and jit_compile per backend: throughput and accuracy.

EfficientNet-Lite0 (real ImageNet weights, offline), Fashion-MNIST with
`--labels-per-class` labels per class at 96 px (the image example's data),
a short two-stage recipe (head, then all blocks); for each backend (one
subprocess each) and each precision policy: the fine-tune stage's training
images per second (from the manifest's stage seconds, validation included)
and test accuracy on `--test-images` test images. Policies and backends run
side by side in one invocation; the load average is recorded before and
after.

    python benchmarks/precision.py --output benchmarks/results/precision.json
    python benchmarks/precision.py --quick              # fewer labels, epochs
    python benchmarks/precision.py --device gpu         # on a GPU machine:
                                                        # float32/bf16, jit on/off

No GPU was lent to this project's sessions so far; `--device gpu` adds the
`jit_compile=True` runs and refuses to run without a GPU.
"""

import argparse
import json
import os
import subprocess
import sys
import time

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
HERE = os.path.dirname(os.path.abspath(__file__))


def _loadavg():
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def worker(args):
    """Runs every policy on the backend of this process; prints JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import transfer
    from transfer import _backend

    sys.path.insert(0, os.path.join(HERE, "..", "examples"))
    import image_finetune

    if args.device == "gpu" and _backend.accelerator() != "gpu":
        raise SystemExit("--device gpu: no GPU visible to this backend")
    example = image_finetune.parse_args([
        "--no-baseline", "--labels-per-class", str(args.labels_per_class),
        "--seed", "0",
    ])
    data = image_finetune.load_data(example)
    test = data["test"].take(max(1, args.test_images // 128))
    head, finetune = (int(e) for e in args.epochs.split(","))
    jits = (False, True) if args.device == "gpu" else ("auto",)
    results = []
    for policy in POLICIES:
        for jit in jits:
            keras.utils.set_random_seed(0)
            model = transfer.build_classifier(
                "efficientnet_lite0", len(data["class_names"]),
                image_size=96, precision=policy)
            recipe = transfer.Recipe((
                transfer.Stage("head", head, 1e-3),
                transfer.Stage("finetune", finetune, 3e-4, "all",
                               schedule="cosine"),
            ), jit_compile=jit)
            run_dir = os.path.join(
                args.run_root,
                f"{keras.config.backend()}-{policy}-{jit}-"
                f"{time.strftime('%H%M%S')}")
            started = time.perf_counter()
            transfer.fit_recipe(model, recipe, data["train"], data["val"],
                                run_dir=run_dir, verbose=0)
            seconds = time.perf_counter() - started
            with open(os.path.join(run_dir, "manifest.json")) as f:
                manifest = json.load(f)
            stage = manifest["stages"][1]
            _, accuracy = model.evaluate(test, verbose=0)
            results.append({
                "backend": keras.config.backend(),
                "precision": policy,
                "jit_compile": manifest["jit_compile"],
                "finetune_images_per_second": round(
                    data["num_train"] * finetune / stage["seconds"], 1),
                "test_accuracy": round(float(accuracy), 4),
                "test_images": min(args.test_images, data["num_test"]),
                "seconds": round(seconds, 1),
                "finite_weights": bool(all(
                    keras.ops.all(keras.ops.isfinite(w))
                    for w in model.weights)),
            })
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            keras.utils.clear_session()
    print(json.dumps(results))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="tensorflow,torch,jax")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--labels-per-class", type=int, default=100)
    parser.add_argument("--epochs", default="1,2", help="HEAD,FINETUNE")
    parser.add_argument("--test-images", type=int, default=2048)
    parser.add_argument("--quick", action="store_true",
                        help="30 labels per class, 512 test images")
    parser.add_argument("--output")
    parser.add_argument("--run-root", default="runs/bench_precision")
    parser.add_argument("--worker", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.labels_per_class, args.test_images = 30, 512
    if args.worker:
        return worker(args)
    report = {"loadavg_before": _loadavg(), "device": args.device,
              "labels_per_class": args.labels_per_class,
              "epochs": args.epochs,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "results": []}
    command = [sys.executable, os.path.abspath(__file__), "--worker",
               "--device", args.device, "--epochs", args.epochs,
               "--labels-per-class", str(args.labels_per_class),
               "--test-images", str(args.test_images),
               "--run-root", args.run_root]
    for backend in args.backends.split(","):
        done = subprocess.run(command, env=dict(os.environ,
                                                KERAS_BACKEND=backend),
                              capture_output=True, text=True, check=False)
        if done.returncode:
            report["results"].append({"backend": backend,
                                      "error": done.stderr[-2000:]})
            continue
        report["results"].extend(json.loads(done.stdout.strip().splitlines()[-1]))
    report["loadavg_after"] = _loadavg()
    text = json.dumps(report, indent=1)
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
