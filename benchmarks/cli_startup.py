"""How long the `transfer` command takes to answer `--help` and `--version`.

Runs `python -m transfer --help`, `transfer train --help` and
`transfer --version` in fresh processes (5 runs each by default) and
reports the median, min and max wall seconds of each, which of TensorFlow,
Keras, KerasHub, JAX and torch the process imported (one extra run that
lists `sys.modules` at exit), and the load average before and after: on a shared machine the figures
mean little without it. The `transfer` package is the one this checkout
holds (it is put first on PYTHONPATH).

    python benchmarks/cli_startup.py [--runs 5] [--output FILE]
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMANDS = {
    "transfer --help": ["--help"],
    "transfer train --help": ["train", "--help"],
    "transfer --version": ["--version"],
}
FRAMEWORKS = ("tensorflow", "keras", "keras_hub", "jax", "torch")
# `transfer ARGS` as the console script runs it (argv[0] "transfer"), then
# the top-level names of every module imported, as JSON on the last line.
PROBE = """
import json, runpy, sys
sys.argv = ["transfer", *sys.argv[1:]]
try:
    runpy.run_module("transfer", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH")) if p
    )
    return env


def _run(args):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "transfer", *args],
        capture_output=True, text=True, env=_environment(), check=False,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(
            f"transfer {' '.join(args)} exited {result.returncode}: "
            f"{result.stderr[-2000:]}"
        )
    return seconds, result


def _frameworks_imported(args):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
        env=_environment(), check=True,
    )
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    return sorted(set(imported) & set(FRAMEWORKS))


def measure(runs):
    """The JSON this script prints."""
    load_before = os.getloadavg()
    commands = {}
    for name, args in COMMANDS.items():
        seconds = [_run(args)[0] for _ in range(runs)]
        commands[name] = {
            "median_s": round(statistics.median(seconds), 3),
            "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3),
            "runs": runs,
            "frameworks_imported": _frameworks_imported(args),
        }
    load_after = os.getloadavg()
    return {
        "commands": commands,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "keras_backend": os.environ.get("KERAS_BACKEND", "(unset)"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5,
                        help="runs per command (default: %(default)s)")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    text = json.dumps(measure(args.runs), indent=2)
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
