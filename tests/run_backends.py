"""Runs the suite once per Keras backend, and the doctests, in parallel lanes.

    python tests/run_backends.py --backends "tensorflow jax torch" --jobs 2 -- -x

`make test` calls this. The suites are queued as tensorflow, jax, torch
(the order of `--backends`), then the doctests (TensorFlow); `--jobs`
processes take the next one as they finish. A pytest process keeps about
one core busy (the tiny test models leave the second idle), so two lanes
on a 2-core machine finish in about the time of the longest suite instead
of the sum (each lane gets its share of OpenMP threads). Each suite's output is written to a log and printed whole when
it ends, with its seconds and the load average, so lanes never interleave.
`TRANSFER_TEST_SHARED_DIR` points every suite at one directory for
fixtures that are the same on all of them (the portability test's saved
models, written under a lock). Exits non-zero if any suite failed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def _jobs(backends, pytest_args):
    """(name, environment additions, command) per suite, in queue order.
    Arguments naming test files or folders replace `tests` and leave the
    doctests out (`make test PYTEST_ARGS="-x tests/test_recipe.py"`)."""
    python = sys.executable
    paths = [a for a in pytest_args if not a.startswith("-")
             and os.path.exists(os.path.join(ROOT, a.split("::")[0]))]
    jobs = [
        (f"KERAS_BACKEND={backend}", {"KERAS_BACKEND": backend},
         [python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
          *pytest_args, *([] if paths else ["tests"])])
        for backend in backends
    ]
    if paths:
        return jobs
    jobs.append((
        "doctests (KERAS_BACKEND=tensorflow)",
        {"KERAS_BACKEND": "tensorflow",
         "PYTHONPATH": os.pathsep.join(
             [os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")])},
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "transfer_doctests", "--doctest-modules", "transfer"],
    ))
    return jobs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="tensorflow jax torch",
                        help="space- or comma-separated, in queue order")
    parser.add_argument("--jobs", type=int, default=2,
                        help="suites at once (1: one after another)")
    parser.add_argument("pytest_args", nargs="*",
                        help="after --: passed to every backend's pytest")
    args = parser.parse_args(argv)
    backends = args.backends.replace(",", " ").split()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1. Received: {args.jobs}")
    queue = _jobs(backends, args.pytest_args)
    # OpenMP threads (torch's CPU kernels) spin while they wait for each
    # other: two suites with two such threads each on two cores slowed a
    # torch training step 10-20x here. One per lane, unless set already.
    lane_env = {}
    if args.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        lane_env["OMP_NUM_THREADS"] = str(
            max(1, (os.cpu_count() or 1) // args.jobs))
    failed, lock = [], threading.Lock()
    started_all = time.time()
    with tempfile.TemporaryDirectory() as shared:

        def worker():
            while True:
                with lock:
                    if not queue:
                        return
                    name, extra, command = queue.pop(0)
                    print(f"=== {name}: started", flush=True)
                env = dict(os.environ, TRANSFER_TEST_SHARED_DIR=shared,
                           **lane_env, **extra)
                started = time.time()
                try:
                    with tempfile.TemporaryFile("w+") as log:
                        code = subprocess.call(
                            command, cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
                        log.seek(0)
                        output = log.read()
                except Exception as e:  # noqa: BLE001 (counted as failed)
                    code, output = -1, f"could not run {command}: {e}\n"
                with lock:
                    print(f"=== {name}", flush=True)
                    sys.stdout.write(output)
                    print(f"=== {name} took {time.time() - started:.0f} s "
                          f"(exit status {code}; load average: {_loadavg()})",
                          flush=True)
                    if code != 0:
                        failed.append(name)

        threads = [threading.Thread(target=worker)
                   for _ in range(min(args.jobs, len(queue)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    print(f"=== all suites took {time.time() - started_all:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else "; all passed"),
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
