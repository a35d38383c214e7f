"""Soak test: a short recipe N times under random SIGKILLs, resumed each time.

Each run trains `benchmarks/resume_job.py` (three stages, six epochs, a
tiny CNN) into a fresh run directory that also holds a file of the user's.
The process is SIGKILLed at random moments (during start-up, mid-epoch,
between epochs, while saving) one to `--max-kills` times, and after each
kill the same command is started again, until it finishes. Checked:

- after every kill: the user's file is intact, every stage marked done is
  still done, every stage with backups has one whose sha256 verifies;
- for every restart: no epoch of a finished stage runs again
  (`finished_stage_retrained`), and training restarts right after the
  newest backup (`progress_regressed` otherwise);
- at the end: the run finished, and its final metrics equal an
  uninterrupted run's within `--tolerance` (`metrics_off`). A kill that
  lands after `manifest.json` is written finds a finished run (a rerun would
  be refused as one), which is checked as it stands.

Prints (and with `--out` writes) JSON: runs, kills, resumes, resumes
survived, what was lost, where the kills landed.

    KERAS_BACKEND=tensorflow python benchmarks/soak.py --runs 20
"""

import argparse
import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "resume_job.py")
ROOT = os.path.dirname(HERE)
STAGE_EPOCHS = ((0, 1), (2, 3), (4, 5))  # as resume_job.STAGES numbers them
USER_FILE = "user-notes.txt"


def _start(run_dir, log):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    return subprocess.Popen(
        [sys.executable, JOB, run_dir, "--log", log],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _lines(log, pid=None):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        rows = [line.split() for line in f if line.strip()]
    return [r for r in rows if pid is None or r[0] == str(pid)]


def _sha(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _snapshot(run_dir):
    """{stage: {"done", "epochs", "good_backups", "backups"}} from disk."""
    stages = {}
    checkpoints = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(checkpoints):
        return stages
    for name in os.listdir(checkpoints):
        path = os.path.join(checkpoints, name, "state.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            state = json.load(f)  # written atomically: never half a file
        good = [
            b["epoch"] for b in state["backups"]
            if os.path.exists(os.path.join(checkpoints, name, b["file"]))
            and _sha(os.path.join(checkpoints, name, b["file"])) == b["sha256"]
        ]
        stages[name] = {
            "done": state["done"], "epochs": state["epochs"],
            "backups": len(state["backups"]), "good_backups": good,
        }
    return stages


def _kill_point(log, pid):
    rows = _lines(log, pid)
    if not rows:
        return "start-up"
    kind, epoch = rows[-1][1], int(rows[-1][2])
    if kind == "begin":
        return "mid-epoch"
    if epoch == STAGE_EPOCHS[-1][1]:
        return "finishing (model, report, manifest)"
    if any(epoch == last for _, last in STAGE_EPOCHS):
        return "stage boundary"
    return "between epochs"


def _expected_start(snapshot):
    """The epoch a restart should begin with, from the backups on disk."""
    for first, last in STAGE_EPOCHS:
        state = next(
            (s for s in snapshot.values()
             if s["epochs"] and first <= s["epochs"][-1] <= last), None,
        )
        if state is None:
            return first
        if state["done"]:
            continue
        good = state["good_backups"]
        return (max(good) + 1) if good else first
    return None  # everything done: nothing to train


def _check(got, expected, tolerance, lost):
    """Counts `metrics_off` unless `got` matches; returns the largest gap."""
    if set(got) != set(expected):
        lost["metrics_off"] += 1
        return float("inf")
    diff = max(abs(got[k] - expected[k]) for k in expected)
    if diff > tolerance:
        lost["metrics_off"] += 1
    return diff


def soak(runs, max_kills, seed, workdir, tolerance):
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    reference_dir = os.path.join(workdir, "reference")
    t0 = time.perf_counter()
    process = _start(reference_dir, reference_dir + ".log")
    while not _lines(reference_dir + ".log") and process.poll() is None:
        time.sleep(0.02)
    t1 = time.perf_counter()
    stdout, stderr = process.communicate()
    if process.returncode:
        raise RuntimeError(f"The reference run failed:\n{stderr[-3000:]}")
    total = time.perf_counter() - t0
    training = time.perf_counter() - t1  # first epoch to exit
    epochs = STAGE_EPOCHS[-1][1] + 1
    expected = json.loads(stdout.strip().splitlines()[-1])
    rows = _lines(reference_dir + ".log")
    lost = collections.Counter()
    points = collections.Counter()
    kills = resumes = survived = finished = 0
    worst = 0.0
    for run in range(runs):
        run_dir = os.path.join(workdir, f"run{run:03d}")
        log = run_dir + ".log"
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, USER_FILE), "w") as f:
            f.write("the user's own file")
        planned = int(rng.integers(1, max_kills + 1))
        attempt = 0
        while True:
            before = _snapshot(run_dir)
            expected_start = _expected_start(before)
            process = _start(run_dir, log)
            killed = False
            if attempt < planned:
                # A fifth of the kills land anywhere (start-up included), the
                # rest once training has begun, spread over what is left.
                left = (epochs - (expected_start or epochs)) / epochs
                if rng.random() < 0.2:
                    delay = rng.uniform(0, total)
                else:
                    while not _lines(log, process.pid) and process.poll() is None:
                        time.sleep(0.02)
                    delay = rng.uniform(0, training * left + 1.0)
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and process.poll() is None:
                    time.sleep(0.01)
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    killed = True
            stdout, stderr = process.communicate()
            ok = True
            begun = [int(r[2]) for r in _lines(log, process.pid) if r[1] == "begin"]
            done_before = [
                s for s in before.values() if s["done"]
            ]
            for state in done_before:
                if set(begun) & set(range(state["epochs"][0], state["epochs"][-1] + 1)):
                    lost["finished_stage_retrained"] += 1
                    ok = False
            if begun and expected_start is not None and begun[0] < expected_start:
                lost["progress_regressed"] += 1
                ok = False
            if attempt > 0:
                resumes += 1
            if killed:
                kills += 1
                manifest = os.path.join(run_dir, "manifest.json")
                points[
                    "after manifest.json (run finished)"
                    if os.path.exists(manifest) else _kill_point(log, process.pid)
                ] += 1
                after = _snapshot(run_dir)
                for name, state in before.items():
                    if state["done"] and not after.get(name, {}).get("done"):
                        lost["finished_stage_lost"] += 1
                        ok = False
                for state in after.values():
                    if state["backups"] and not state["good_backups"]:
                        lost["checkpoint_destroyed"] += 1
                        ok = False
                user = os.path.join(run_dir, USER_FILE)
                if not os.path.exists(user) or open(user).read() != "the user's own file":
                    lost["user_file_destroyed"] += 1
                    ok = False
                if attempt > 0 and ok:
                    survived += 1
                attempt += 1
                if os.path.exists(manifest):
                    # Killed after the run finished (while trimming backups
                    # or exiting): a rerun is refused as a finished run, so
                    # check the run as it stands.
                    with open(manifest) as f:
                        got = json.load(f)["stages"][-1]["metrics"]
                    finished += 1
                    worst = max(worst, _check(got, expected, tolerance, lost))
                    if not os.path.exists(os.path.join(run_dir, "model.keras")):
                        lost["model_missing"] += 1
                    break
                continue
            if process.returncode != 0:
                lost["run_failed"] += 1
                print(stderr[-3000:], file=sys.stderr)
                break
            if attempt > 0 and ok:
                survived += 1
            finished += 1
            got = json.loads(stdout.strip().splitlines()[-1])
            worst = max(worst, _check(got, expected, tolerance, lost))
            if not os.path.exists(os.path.join(run_dir, "model.keras")):
                lost["model_missing"] += 1
            break
        print(f"run {run + 1}/{runs}: {attempt} kill(s), "
              f"lost so far {sum(lost.values())}", file=sys.stderr, flush=True)
    return {
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "runs": runs,
        "finished": finished,
        "kills": kills,
        "resumes": resumes,
        "resumes_survived": survived,
        "lost": {
            key: lost.get(key, 0) for key in (
                "finished_stage_retrained", "finished_stage_lost",
                "progress_regressed", "checkpoint_destroyed",
                "user_file_destroyed", "model_missing", "metrics_off",
                "run_failed",
            )
        },
        "lost_total": sum(lost.values()),
        "kill_points": dict(points),
        "max_metric_difference": worst,
        "tolerance": tolerance,
        "reference_run_seconds": round(total, 1),
        "reference_training_seconds": round(training, 1),
        "reference_epochs": len([r for r in rows if r[1] == "begin"]),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--max-kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--workdir", default=None,
                        help="where the runs go; default: a new temp folder")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="transfer-soak-")
    os.makedirs(workdir, exist_ok=True)
    result = soak(args.runs, args.max_kills, args.seed, workdir, args.tolerance)
    result["workdir"] = workdir
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if result["lost_total"] else 0


if __name__ == "__main__":
    sys.exit(main())
