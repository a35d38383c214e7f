"""Runs the suite once per Keras backend, and the doctests, each suite
spread over `--jobs` worker processes (pytest-xdist).

    python tests/run_backends.py --backends "tensorflow jax torch" --jobs 2 -- -x

`make test` calls this. The suites run one after another (tensorflow, jax,
torch: the order of `--backends`, then the doctests on TensorFlow); within
each, `--jobs` workers take tests as they finish (`--dist worksteal`: each
starts on its own half of the suite, in file order, and an idle worker
takes tests from the end of the other's). A pytest process keeps about one
core busy (the tiny test models leave a second one idle), so two workers on
a 2-core machine halve a suite's time; each worker gets its share of
OpenMP threads (two torch processes with two spinning OpenMP threads each
slowed a torch step 10-20x on two cores). Whole suites as lanes, as before,
left one lane waiting on the TensorFlow suite for a third of the run.

Each suite prints its seconds and the load average when it ends.
`TRANSFER_TEST_SHARED_DIR` points every worker at one directory for
fixtures that are the same on all of them (the portability test's saved
models, written under a lock). Exits non-zero if any suite failed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def _jobs(backends, pytest_args, workers):
    """(name, environment additions, command) per suite, in order.
    Arguments naming test files or folders replace `tests` and leave the
    doctests out (`make test PYTEST_ARGS="-x tests/test_recipe.py"`)."""
    python = sys.executable
    paths = [a for a in pytest_args if not a.startswith("-")
             and os.path.exists(os.path.join(ROOT, a.split("::")[0]))]
    spread = ["-n", str(workers), "--dist", "worksteal"] if workers > 1 else []
    jobs = [
        (f"KERAS_BACKEND={backend}", {"KERAS_BACKEND": backend},
         [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *spread,
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
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *spread,
         "-p", "transfer_doctests", "--doctest-modules", "transfer"],
    ))
    return jobs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="tensorflow jax torch",
                        help="space- or comma-separated, in order")
    parser.add_argument("--jobs", type=int, default=2,
                        help="worker processes per suite (1: no workers, "
                             "the suite runs in one process)")
    parser.add_argument("pytest_args", nargs="*",
                        help="after --: passed to every backend's pytest")
    args = parser.parse_args(argv)
    backends = args.backends.replace(",", " ").split()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1. Received: {args.jobs}")
    extra = {}
    if args.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        extra["OMP_NUM_THREADS"] = str(
            max(1, (os.cpu_count() or 1) // args.jobs))
    failed = []
    started_all = time.time()
    with tempfile.TemporaryDirectory() as shared:
        # JAX's persistent compilation cache in a directory of this run
        # only: tests that compile the same program (the tiny CNN's steps)
        # reuse it across tests and workers, and no run reads programs an
        # earlier one wrote. (tests/conftest.py turns it off otherwise.)
        if "TRANSFER_COMPILATION_CACHE" not in os.environ:
            extra["TRANSFER_COMPILATION_CACHE"] = os.path.join(
                shared, "jax-compilation-cache")
        for name, env_extra, command in _jobs(
                backends, args.pytest_args, args.jobs):
            print(f"=== {name}: started (load average: {_loadavg()})",
                  flush=True)
            env = dict(os.environ, TRANSFER_TEST_SHARED_DIR=shared,
                       **extra, **env_extra)
            started = time.time()
            code = subprocess.call(command, cwd=ROOT, env=env)
            print(f"=== {name} took {time.time() - started:.0f} s "
                  f"(exit status {code}; load average: {_loadavg()})",
                  flush=True)
            if code != 0:
                failed.append(name)
    print(f"=== all suites took {time.time() - started_all:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else "; all passed"),
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
