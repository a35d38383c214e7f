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

`--mode disk-full` fails a random file commit instead of killing (the
job's `--fail-write K`: ENOSPC, as a full disk would), one to `--max-kills`
times per run, then reruns until the run finishes. Checked besides: every
failure's message names the file and the fix (`error_unexplained`), and
at the end the best weights equal the uninterrupted run's
(`best_weights_wrong`), every file the manifest lists exists with its
sha256 (`manifest_file_missing`), and the manifest's seconds are the sum
of its attempts (`seconds_not_summed`).

`--mode data-change` trains on an image folder, kills the run once it has
begun, then changes the data or the settings (files removed, added or
touched; another seed or image size) and reruns: the rerun must be refused
before training (`changed_data_accepted`), name the difference
(`difference_not_listed`) and leave the run directory byte-identical
(`refused_run_modified_dir`); the change is then undone and the run must
resume and finish (`run_failed`, `progress_regressed`). The folder's
datasets are shuffled per epoch, so metrics are not compared in this mode.

    KERAS_BACKEND=tensorflow python benchmarks/soak.py --runs 20
    KERAS_BACKEND=tensorflow python benchmarks/soak.py --mode disk-full --runs 5
    KERAS_BACKEND=tensorflow python benchmarks/soak.py --mode data-change --runs 5
"""

import argparse
import collections
import hashlib
import json
import os
import shutil
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


def _start(run_dir, log, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    return subprocess.Popen(
        [sys.executable, JOB, run_dir, "--log", log, *extra],
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
    rows = [r for r in _lines(log, pid) if r[1] in ("begin", "end")]
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


def _reference(workdir, name, *extra):
    """An uninterrupted run: its metrics, timings and number of commits."""
    run_dir = os.path.join(workdir, name)
    log = run_dir + ".log"
    t0 = time.perf_counter()
    process = _start(run_dir, log, *extra)
    while not _lines(log) and process.poll() is None:
        time.sleep(0.02)
    t1 = time.perf_counter()
    stdout, stderr = process.communicate()
    if process.returncode:
        raise RuntimeError(f"The reference run failed:\n{stderr[-3000:]}")
    rows = _lines(log)
    return {
        "run_dir": run_dir,
        "metrics": json.loads(stdout.strip().splitlines()[-1]),
        "total": time.perf_counter() - t0,
        "training": time.perf_counter() - t1,
        "writes": int(next(r[2] for r in rows if r[1] == "writes")),
        "epochs": len([r for r in rows if r[1] == "begin"]),
    }


def _h5_arrays(path):
    import h5py  # Keras's own dependency

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def _check_finished_run(run_dir, reference, tolerance, lost):
    """Best weights, manifest files and seconds of a finished run."""
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    for name, digest in (manifest.get("files") or {}).items():
        path = os.path.join(run_dir, name)
        if not os.path.exists(path) or _sha(path) != digest:
            lost["manifest_file_missing"] += 1
    checkpoint = manifest.get("checkpoint")
    if not checkpoint or not os.path.exists(os.path.join(run_dir, checkpoint)):
        lost["manifest_file_missing"] += 1
        lost["best_weights_wrong"] += 1
    else:
        got = _h5_arrays(os.path.join(run_dir, checkpoint))
        want = reference["best_weights"]
        if set(got) != set(want) or any(
            not np.allclose(got[k], want[k], atol=tolerance) for k in want
        ) or manifest.get("best") != reference["best"]:
            lost["best_weights_wrong"] += 1
    log = manifest.get("attempt_log") or []
    if len(log) != manifest.get("attempts") or abs(
        sum(a["seconds"] for a in log) - manifest.get("seconds", -1)
    ) > 0.05:
        lost["seconds_not_summed"] += 1
    return manifest["stages"][-1]["metrics"]


def soak_disk_full(runs, max_failures, seed, workdir, tolerance):
    """Fails random file commits with ENOSPC; reruns until finished."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    reference = _reference(workdir, "reference")
    with open(os.path.join(reference["run_dir"], "manifest.json")) as f:
        reference["best"] = json.load(f)["best"]
    reference["best_weights"] = _h5_arrays(os.path.join(
        reference["run_dir"], "checkpoints", "best.weights.h5"))
    lost = collections.Counter()
    points = collections.Counter()
    failures = resumes = finished = 0
    worst = 0.0
    for run in range(runs):
        run_dir = os.path.join(workdir, f"run{run:03d}")
        log = run_dir + ".log"
        planned = int(rng.integers(1, max_failures + 1))
        attempt = 0
        while True:
            before = _snapshot(run_dir)
            expected_start = _expected_start(before)
            fail = int(rng.integers(1, reference["writes"] + 1))
            extra = ["--fail-write", str(fail)] if attempt < planned else []
            process = _start(run_dir, log, *extra)
            stdout, stderr = process.communicate()
            if attempt > 0:
                resumes += 1
            begun = [int(r[2]) for r in _lines(log, process.pid)
                     if r[1] == "begin"]
            if begun and expected_start is not None and (
                    begun[0] < expected_start):
                lost["progress_regressed"] += 1
            for state in before.values():
                if state["done"] and set(begun) & set(
                        range(state["epochs"][0], state["epochs"][-1] + 1)):
                    lost["finished_stage_retrained"] += 1
            manifest = os.path.join(run_dir, "manifest.json")
            if process.returncode != 0:
                failed = [r[2] for r in _lines(log, process.pid)
                          if r[1] == "fail"]
                if not extra or not failed:
                    lost["run_failed"] += 1
                    print(stderr[-3000:], file=sys.stderr)
                    break
                failures += 1
                points[failed[0]] += 1
                if "No space left on device" not in stderr or (
                        "Free space" not in stderr or failed[0] not in stderr):
                    lost["error_unexplained"] += 1
                after = _snapshot(run_dir)
                for state in after.values():
                    if state["backups"] and not state["good_backups"]:
                        lost["checkpoint_destroyed"] += 1
                for name, state in before.items():
                    if state["done"] and not after.get(name, {}).get("done"):
                        lost["finished_stage_lost"] += 1
                attempt += 1
                if os.path.exists(manifest):  # failed while trimming
                    finished += 1
                    got = _check_finished_run(run_dir, reference, tolerance,
                                              lost)
                    worst = max(worst, _check(
                        got, reference["metrics"], tolerance, lost))
                    break
                continue
            finished += 1
            _check_finished_run(run_dir, reference, tolerance, lost)
            got = json.loads(stdout.strip().splitlines()[-1])
            worst = max(worst, _check(got, reference["metrics"], tolerance,
                                      lost))
            break
        print(f"run {run + 1}/{runs}: {attempt} failed write(s), "
              f"lost so far {sum(lost.values())}", file=sys.stderr,
              flush=True)
    keys = ("finished_stage_retrained", "finished_stage_lost",
            "progress_regressed", "checkpoint_destroyed", "error_unexplained",
            "best_weights_wrong", "manifest_file_missing",
            "seconds_not_summed", "metrics_off", "run_failed")
    return {
        "mode": "disk-full",
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "runs": runs,
        "finished": finished,
        "failed_writes": failures,
        "resumes": resumes,
        "lost": {key: lost.get(key, 0) for key in keys},
        "lost_total": sum(lost.values()),
        "failed_write_of": dict(points),
        "max_metric_difference": worst,
        "tolerance": tolerance,
        "writes_per_run": reference["writes"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def _write_folder(folder, seed):
    """32 PNGs in two class folders, learnable as `synthetic_images`."""
    from PIL import Image  # Pillow: the preflight's own dependency

    rng = np.random.default_rng(seed)
    for i in range(32):
        label = i % 2
        image = rng.uniform(0, 64, size=(32, 32, 3))
        image[label * 16:(label + 1) * 16, :, label] += 160
        path = os.path.join(folder, "ab"[label], f"{i:02d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image.astype("uint8")).save(path)


def _tree_digest(directory):
    digest = hashlib.sha256()
    for root, folders, files in sorted(os.walk(directory)):
        folders.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, directory).encode())
            digest.update(_sha(path).encode())
    return digest.hexdigest()


def _change(kind, folder, rng):
    """Applies one change; returns (job flags, expected text, undo)."""
    files = sorted(os.path.join(folder, "a", n)
                   for n in os.listdir(os.path.join(folder, "a")))
    if kind == "seed":
        return ["--seed", "5"], "seed 1337 -> 5", lambda: None
    if kind == "image_size":
        return ["--image-size", "40"], "image_size 32 -> 40", lambda: None
    if kind == "remove":
        chosen = list(rng.choice(files, 3, replace=False))
        aside = folder + ".aside"
        os.makedirs(aside, exist_ok=True)
        for path in chosen:  # os.rename keeps the modification time
            os.rename(path, os.path.join(aside, os.path.basename(path)))

        def undo():
            for path in chosen:
                os.rename(os.path.join(aside, os.path.basename(path)), path)
        return [], "3 files removed from 'a/'", undo
    if kind == "touch":
        path = str(rng.choice(files))
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        return [], "changed (size or modification time) in 'a/'", (
            lambda: os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns)))
    added = os.path.join(folder, "a", "zz-new.png")
    shutil.copy(files[0], added)
    return [], "1 file added to 'a/'", lambda: os.remove(added)


CHANGES = ("remove", "touch", "add", "seed", "image_size")


def soak_data_change(runs, seed, workdir):
    """Kills a folder run, changes its data or settings, reruns (refused),
    undoes the change, reruns (resumed)."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    folder = os.path.join(workdir, "data-reference")
    _write_folder(folder, 0)
    reference = _reference(workdir, "reference", "--folder", folder)
    lost = collections.Counter()
    tested = collections.Counter()
    refused = finished = 0
    for run in range(runs):
        run_dir = os.path.join(workdir, f"run{run:03d}")
        log = run_dir + ".log"
        folder = os.path.join(workdir, f"data{run:03d}")
        _write_folder(folder, run + 1)
        flags = ["--folder", folder]
        process = _start(run_dir, log, *flags)
        while not _lines(log, process.pid) and process.poll() is None:
            time.sleep(0.02)
        deadline = time.monotonic() + rng.uniform(
            0, reference["training"] * 0.8)
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.communicate()
        started_run = os.path.exists(
            os.path.join(run_dir, "checkpoints", "run.json"))
        if started_run and not os.path.exists(
                os.path.join(run_dir, "manifest.json")):
            kind = str(rng.choice(CHANGES))
            tested[kind] += 1
            before = _tree_digest(run_dir)
            extra, expected, undo = _change(kind, folder, rng)
            try:
                process = _start(run_dir, log, *flags, *extra)
                _, stderr = process.communicate()
            finally:
                undo()
            begun = [r for r in _lines(log, process.pid) if r[1] == "begin"]
            if process.returncode == 0 or begun:
                lost["changed_data_accepted"] += 1
            else:
                refused += 1
            if expected not in stderr:
                lost["difference_not_listed"] += 1
                print(stderr[-2000:], file=sys.stderr)
            if _tree_digest(run_dir) != before:
                lost["refused_run_modified_dir"] += 1
        else:
            tested["none (killed before run.json or after manifest.json)"] += 1
        if not os.path.exists(os.path.join(run_dir, "manifest.json")):
            expected_start = _expected_start(_snapshot(run_dir))
            process = _start(run_dir, log, *flags)
            _, stderr = process.communicate()
            begun = [int(r[2]) for r in _lines(log, process.pid)
                     if r[1] == "begin"]
            if process.returncode != 0:
                lost["run_failed"] += 1
                print(stderr[-3000:], file=sys.stderr)
                continue
            if begun and expected_start is not None and (
                    begun[0] < expected_start):
                lost["progress_regressed"] += 1
        finished += 1
        if not os.path.exists(os.path.join(run_dir, "model.keras")):
            lost["model_missing"] += 1
        print(f"run {run + 1}/{runs}: lost so far {sum(lost.values())}",
              file=sys.stderr, flush=True)
    keys = ("changed_data_accepted", "difference_not_listed",
            "refused_run_modified_dir", "progress_regressed",
            "model_missing", "run_failed")
    return {
        "mode": "data-change",
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "runs": runs,
        "finished": finished,
        "changes_tested": dict(tested),
        "refused": refused,
        "lost": {key: lost.get(key, 0) for key in keys},
        "lost_total": sum(lost.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="kill",
                        choices=("kill", "disk-full", "data-change"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--max-kills", type=int, default=3,
                        help="kills (or failed writes) per run, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--workdir", default=None,
                        help="where the runs go; default: a new temp folder")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="transfer-soak-")
    os.makedirs(workdir, exist_ok=True)
    if args.mode == "disk-full":
        result = soak_disk_full(args.runs, args.max_kills, args.seed, workdir,
                                args.tolerance)
    elif args.mode == "data-change":
        result = soak_data_change(args.runs, args.seed, workdir)
    else:
        result = soak(args.runs, args.max_kills, args.seed, workdir,
                      args.tolerance)
    result["workdir"] = workdir
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if result["lost_total"] else 0


if __name__ == "__main__":
    sys.exit(main())
