"""torch's automatic switches on and off in one process: direct layer calls
(`transfer._torch_graph`) and one-pass batch normalization
(`transfer._torch_layout`), seconds per training step and per
`predict_on_batch`.

    KERAS_BACKEND=torch python benchmarks/torch_switches.py --output s.json

For each model (MobileNetV3Small at 160 px, random init; EfficientNet-Lite0
at 128 px, its real offline weights) and each switch: the largest
difference of the predictions with the switch on and off, then `--rounds`
rounds, off and on in turn, of `--steps` `train_on_batch` steps (median
per round), then `--predicts` `predict_on_batch` calls each, off and on in
turn. One batch of `--batch-size` random images. The other switch stays
at its default. The JSON records the load average before and after.
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402  (benchmarks/run.py: load average)

MODELS = (("mobilenet_v3_small", 160, {"weights": None}),
          ("efficientnet_lite0", 128, {}))


def _timed(fn, count):
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def _measure(name, size, kwargs, use, args):
    import keras
    import numpy as np

    import transfer

    keras.utils.set_random_seed(0)
    model = transfer.build_classifier(name, 10, image_size=size,
                                      dropout=0.0, **kwargs)
    transfer.set_trainable_blocks(model, "all")
    x = np.random.default_rng(0).uniform(
        0, 255, (args.batch_size, size, size, 3)).astype("float32")
    y = np.zeros(len(x), "int32")
    predictions = {}
    for on in (False, True):
        use(on)
        predictions[on] = np.asarray(model.predict_on_batch(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss="sparse_categorical_crossentropy")
    for _ in range(3):  # warm up
        model.train_on_batch(x, y)
    steps = {False: [], True: []}
    for _ in range(args.rounds):
        for on in (False, True):
            use(on)
            steps[on].append(_timed(lambda: model.train_on_batch(x, y),
                                    args.steps))
    predicts = {False: [], True: []}
    for _ in range(args.predicts):
        for on in (False, True):
            use(on)
            predicts[on].append(_timed(lambda: model.predict_on_batch(x), 1))
    use(True)
    step = {k: statistics.median(v) for k, v in steps.items()}
    predict = {k: statistics.median(v) for k, v in predicts.items()}
    return {
        "max_prediction_difference": float(
            np.abs(predictions[True] - predictions[False]).max()),
        "train_step_s": {"off": round(step[False], 4),
                         "on": round(step[True], 4)},
        "train_step_speedup": round(step[False] / step[True], 3),
        "predict_s": {"off": round(predict[False], 4),
                      "on": round(predict[True], 4)},
        "predict_speedup": round(predict[False] / predict[True], 3),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--predicts", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    import keras

    if keras.config.backend() != "torch":
        parser.error("run it with KERAS_BACKEND=torch")
    from transfer import _torch_graph
    from transfer import _torch_layout

    switches = {"direct_calls": _torch_graph.use_direct_calls,
                "affine_batch_norm": _torch_layout.use_affine_batch_norm}
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "loadavg_start": bench._loadavg(), "config": vars(args),
              "results": {}}
    for name, size, kwargs in MODELS:
        for switch, use in switches.items():
            result = _measure(name, size, kwargs, use, args)
            report["results"][f"{name}/{switch}"] = result
            print(name, switch, json.dumps(result), flush=True)
    report["loadavg_end"] = bench._loadavg()
    text = json.dumps(report, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(f"load average {report['loadavg_start']} -> "
          f"{report['loadavg_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
