"""SIGKILL a real training process at chosen points, rerun the same command,
and compare with an uninterrupted run (benchmarks/resume_job.py).

Covers: transfer.training.resume (benchmarks/resume_job.py).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "benchmarks", "resume_job.py")


def _start(run_dir, log, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    return subprocess.Popen(
        [sys.executable, JOB, str(run_dir), "--log", str(log), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _finish(process):
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _kill_when(process, marker):
    deadline = time.monotonic() + 600
    while not os.path.exists(marker):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def _begun(log, pid):
    with open(log) as f:
        return [int(line.split()[2]) for line in f
                if line.split()[:2] == [str(pid), "begin"]]


def test_sigkill_and_rerun_loses_nothing(tmp_path):
    reference = _start(tmp_path / "reference", tmp_path / "reference.log")
    expected = _finish(reference)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "my-notes.txt").write_text("keep me")
    log = tmp_path / "run.log"
    # Stages: head = epochs 0-1, middle = 2-3, all = 4-5.
    # 1. Killed right after the last epoch of stage 'head' was backed up,
    #    before the stage was marked done.
    first = _start(run_dir, log, "--pause-after-epoch", "1")
    _kill_when(first, f"{run_dir}.reached-1")
    # 2. Killed in the middle of epoch 3 (stage 'middle', after a batch).
    second = _start(run_dir, log, "--pause-in-epoch", "3")
    _kill_when(second, f"{run_dir}.reached-3")
    assert not (run_dir / "manifest.json").exists()
    # 3. The same command again finishes the run.
    third = _start(run_dir, log)
    got = _finish(third)

    assert _begun(log, first.pid) == [0, 1]
    assert _begun(log, second.pid) == [2, 3]  # stage 'head' not retrained
    assert _begun(log, third.pid) == [3, 4, 5]  # epoch 3 from its start
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["attempts"] == 3
    assert [s["resumed_after_epoch"] for s in manifest["stages"]] == [1, 2, None]
    assert (run_dir / "my-notes.txt").read_text() == "keep me"
    assert (run_dir / "model.keras").exists()
