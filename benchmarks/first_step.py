"""Time to the first training step, with and without JAX's compilation cache.

    python benchmarks/first_step.py --output first_step.json

Each measurement is a fresh process (`benchmarks/keras_worker.py`, part
`first_step`: import, build EfficientNet-Lite0 with its real offline
weights, compile, one `train_on_batch`; on TensorFlow, fit_recipe's build of
the optimizer's and metrics' variables before the step is traced,
`stage_options.build_before_fit`, and Adam fused (`transfer._tf_adam`);
the same with Keras's Adam update, mode `keras_adam`; with Grappler,
TensorFlow's graph optimizer, which `transfer._tf_graph` skips on a CPU,
mode `grappler`; and Keras alone, mode `keras_alone`). On JAX it runs, interleaved,
`--repeats` times each: the persistent compilation cache off
(`TRANSFER_COMPILATION_CACHE=0`), on and cold (an empty cache directory;
Keras's initial values, `TRANSFER_JAX_LAZY_INIT=0`, so that it fills the
cache for both warm runs), and on and warm (the directory the cold run
filled), which is what a user's second run of the same model sees, with
`transfer._jax_init`'s lazy initial values (the default) and without.
TensorFlow and torch run once per repeat as the reference. The JSON records the load average before and
after.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402  (benchmarks/run.py: the same worker calls)


def _first_step(backend, config, **env):
    environment = dict(
        os.environ, KERAS_BACKEND=backend, **env,
        PYTHONPATH=os.pathsep.join([bench.ROOT,
                                    os.environ.get("PYTHONPATH", "")]))
    result = bench._json_step(
        [sys.executable, os.path.join(HERE, "keras_worker.py")],
        config, env=environment)
    return result.get("first_step", {"error": result.get("error")})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--modes", default="",
                        help="comma-separated modes to run (default: all), "
                             "e.g. default,grappler")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    modes = {m for m in args.modes.split(",") if m}
    config = dict(bench.QUICK, parts=["first_step"])
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "loadavg_start": bench._loadavg(), "config": config,
              "runs": []}
    backends = [b for b in args.backends.split(",") if b]
    for repeat in range(args.repeats):
        for backend in backends:
            if backend == "tensorflow":
                # fit_recipe's path (variables built before the first
                # trace, Adam fused), without the fused Adam, and Keras
                # alone, side by side.
                # Also with Grappler (`transfer._tf_graph` skips it on a
                # CPU), and Keras alone has it.
                grappler = {"TRANSFER_TF_SKIP_GRAPPLER": "0"}
                runs = [("default", {}, True),
                        ("grappler", grappler, True),
                        ("keras_adam", {"TRANSFER_TF_FUSED_ADAM": "0"}, True),
                        ("keras_alone", {"TRANSFER_TF_FUSED_ADAM": "0",
                                         **grappler}, False)]
            elif backend != "jax":
                runs = [("default", {}, True)]
            else:
                cache = tempfile.mkdtemp(prefix="jax-cache-")
                # The cold run keeps Keras's initial values, so the cache
                # then holds the programs of both warm runs: with lazy
                # initial values (`transfer._jax_init`, the default) and
                # without.
                keras_init = {"TRANSFER_COMPILATION_CACHE": cache,
                              "TRANSFER_JAX_LAZY_INIT": "0"}
                runs = [("cache_off", {"TRANSFER_COMPILATION_CACHE": "0"}, True),
                        ("cache_cold_keras_init", keras_init, True),
                        ("cache_warm", {"TRANSFER_COMPILATION_CACHE": cache}, True),
                        ("cache_warm_keras_init", keras_init, True)]
            for mode, env, build in runs:
                if modes and mode not in modes:
                    continue
                result = _first_step(
                    backend, dict(config, build_before_fit=build), **env)
                print(backend, mode, result.get("time_to_first_step_s"),
                      flush=True)
                report["runs"].append(
                    {"repeat": repeat, "backend": backend, "mode": mode,
                     **result})
            if backend == "jax":
                shutil.rmtree(cache, ignore_errors=True)
    report["loadavg_end"] = bench._loadavg()
    summary = {}
    for run in report["runs"]:
        key = f"{run['backend']}/{run['mode']}"
        if run.get("time_to_first_step_s") is not None:
            summary.setdefault(key, []).append(run["time_to_first_step_s"])
    report["median_time_to_first_step_s"] = {
        k: round(statistics.median(v), 2) for k, v in summary.items()}
    text = json.dumps(report, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(json.dumps(report["median_time_to_first_step_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
