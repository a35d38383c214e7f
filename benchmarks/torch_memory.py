"""Keras-on-torch inference with and without early release of intermediate
tensors (`transfer._torch_graph`): seconds per `predict_on_batch` call and
the rise of peak resident memory.

    python benchmarks/torch_memory.py --output torch_memory.json

Each measurement is a fresh process (so peak memory is its own): build
EfficientNet-Lite0 with its real offline weights, a feature model (images
-> pooled features, the cached head stage's feature pass), then `--calls`
`predict_on_batch` calls of one batch (`--batch-size`, `--image-size`).
The two variants run interleaved, `--repeats` times each. The JSON records
the load average before and after.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402  (benchmarks/run.py: load average, root)


def _worker(batch_size, image_size, calls):
    import keras
    import numpy as np

    import transfer

    model = transfer.build_classifier("efficientnet_lite0", 10,
                                      image_size=image_size)
    features = keras.Model(model.inputs, model.get_layer("pooler").output)
    x = np.random.default_rng(0).uniform(
        0, 255, (batch_size, image_size, image_size, 3)).astype("float32")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        features.predict_on_batch(x)
        seconds.append(round(time.perf_counter() - started, 3))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds_per_call": seconds,
            "peak_rss_rise_mb": round((after - before) / 1024),
            "early_release": transfer._torch_graph.state()["early_release"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=125)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--output")
    parser.add_argument("--worker", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.batch_size, args.image_size,
                                 args.calls)))
        return 0
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "loadavg_start": bench._loadavg(),
              "config": {"model": "efficientnet_lite0 (real ImageNet "
                                  "weights, offline), features to 'pooler'",
                         "batch_size": args.batch_size,
                         "image_size": args.image_size, "calls": args.calls},
              "runs": []}
    for repeat in range(args.repeats):
        for variant, value in (("keras", "0"), ("early_release", "1")):
            env = dict(os.environ, KERAS_BACKEND="torch",
                       TRANSFER_TORCH_EARLY_RELEASE=value,
                       TF_CPP_MIN_LOG_LEVEL="3",
                       PYTHONPATH=os.pathsep.join(
                           [bench.ROOT, os.environ.get("PYTHONPATH", "")]))
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker",
                 "--calls", str(args.calls), "--batch-size",
                 str(args.batch_size), "--image-size", str(args.image_size)],
                env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(variant, result, flush=True)
            report["runs"].append({"repeat": repeat, "variant": variant,
                                   **result})
    report["loadavg_end"] = bench._loadavg()
    summary = {}
    for run in report["runs"]:
        entry = summary.setdefault(run["variant"], {
            "first_call_s": [], "later_calls_median_s": [],
            "peak_rss_rise_mb": []})
        entry["first_call_s"].append(run["seconds_per_call"][0])
        entry["later_calls_median_s"].append(
            statistics.median(run["seconds_per_call"][1:]))
        entry["peak_rss_rise_mb"].append(run["peak_rss_rise_mb"])
    report["summary"] = summary
    text = json.dumps(report, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
