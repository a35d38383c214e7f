"""TensorFlow's steady-state speed with and without Grappler.

    python benchmarks/tf_grappler.py --rounds 2 --output tf_grappler.json

`transfer._tf_graph` turns Grappler (TensorFlow's graph optimizer) off on
a CPU because it costs time at each function's first run and, on a CPU,
the steps it produced ran no faster. This checks the second half: fresh
processes alternating with Grappler off (the default) and on
(`TRANSFER_TF_SKIP_GRAPPLER=0`), each timing, after two warm-up calls,
EfficientNet-Lite0 (real weights, 128 px) `predict_on_batch` at batch 125
and its training step at batch 32, MobileNetV3Small (random init, 160 px)
training at batch 32, and the small ViT (random init, 64 px) training and
`predict_on_batch` at batch 32, in images/s. JSON with the load average
before and after.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _worker():
    import keras
    import numpy as np

    import transfer

    rng = np.random.default_rng(0)
    result = {}

    def rate(fn, images, calls):
        fn()
        fn()
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        return round(images * calls / (time.perf_counter() - started), 1)

    def train(model, size):
        transfer.set_trainable_blocks(model, "all")
        model.compile(optimizer=keras.optimizers.Adam(1e-4),
                      loss="sparse_categorical_crossentropy")
        x = rng.uniform(0, 255, (32, size, size, 3)).astype("float32")
        y = np.zeros(32, "int32")
        return rate(lambda: model.train_on_batch(x, y), 32, 12)

    lite0 = transfer.build_classifier("efficientnet_lite0", 10,
                                      image_size=128)
    features = keras.Model(lite0.inputs, lite0.get_layer("pooler").output)
    x = rng.uniform(0, 255, (125, 128, 128, 3)).astype("float32")
    result["lite0_predict"] = rate(lambda: features.predict_on_batch(x),
                                   125, 6)
    result["lite0_train"] = train(lite0, 128)
    result["mobilenet_v3_small_train"] = train(transfer.build_classifier(
        "mobilenet_v3_small", 10, weights=None, image_size=160), 160)
    vit = transfer.build_classifier("small_vit", 10, weights=None,
                                    image_size=64)
    result["small_vit_train"] = train(vit, 64)
    x = rng.uniform(0, 255, (32, 64, 64, 3)).astype("float32")
    result["small_vit_predict"] = rate(lambda: vit.predict_on_batch(x),
                                       32, 20)
    from transfer import _tf_graph

    result["grappler"] = _tf_graph.state()["grappler"]
    print(json.dumps(result))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "loadavg_start": [round(v, 2) for v in os.getloadavg()],
              "runs": []}
    for round_ in range(args.rounds):
        for mode, value in (("default", "1"), ("grappler", "0")):
            env = dict(os.environ, KERAS_BACKEND="tensorflow",
                       TRANSFER_TF_SKIP_GRAPPLER=value,
                       TF_CPP_MIN_LOG_LEVEL="3",
                       PYTHONPATH=os.pathsep.join(
                           [ROOT, os.environ.get("PYTHONPATH", "")]))
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker"],
                env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(round_, mode, result, flush=True)
            report["runs"].append({"round": round_, "mode": mode, **result})
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    medians = {}
    for run in report["runs"]:
        for key, value in run.items():
            if isinstance(value, float):
                medians.setdefault(run["mode"], {}).setdefault(
                    key, []).append(value)
    report["median_images_per_s"] = {
        mode: {k: statistics.median(v) for k, v in values.items()}
        for mode, values in medians.items()}
    text = json.dumps(report, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(json.dumps(report["median_images_per_s"]))
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker()
    else:
        sys.exit(main())
