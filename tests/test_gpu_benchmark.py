"""The GPU benchmark's bookkeeping (benchmarks/run_gpu.py) on made-up
worker results: no GPU, no subprocess, milliseconds.

Covers: benchmarks/run_gpu.py (`run.py --device gpu`): refusal without a
GPU, model FLOP utilisation and ratios to the torch.compile peer.
"""

import argparse
import importlib
import json
import os

import pytest

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_gpu(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    return importlib.import_module("run_gpu")


def test_refuses_early_naming_what_each_backend_lacks(run_gpu, monkeypatch,
                                                      tmp_path):
    checks = {
        "tensorflow": {"accelerator": "cpu",
                       "missing": "tensorflow 2.21.0 is a CPU-only build"},
        "jax": {"accelerator": "cpu", "missing": "jax 0.10.2 has no GPU"},
    }
    monkeypatch.setattr(run_gpu, "check_backends", lambda *a: checks)
    monkeypatch.setattr(run_gpu, "nvidia_smi", lambda: {"error": "none"})

    def measured(*args, **kwargs):
        raise AssertionError("measured something without a GPU")

    monkeypatch.setattr(run_gpu.bench, "_json_step", measured)
    output = tmp_path / "gpu.json"
    args = argparse.Namespace(device="gpu", smoke=False, budget_s=60,
                              output=str(output))
    assert run_gpu.main(args, ["tensorflow", "jax"]) == 2
    report = json.loads(output.read_text())
    assert report["errors"] == [
        "keras/tensorflow: no GPU: tensorflow 2.21.0 is a CPU-only build",
        "keras/jax: no GPU: jax 0.10.2 has no GPU"]


def test_rows_give_mfu_against_the_rows_math_and_ratio_to_compile(run_gpu):
    def keras_row(precision, requested, ips):
        return {"precision": precision, "jit_compile_requested": requested,
                "jit_compile": requested is True, "images_per_s": ips,
                "forward_gflops_per_image": 2.0}

    report = {
        "device": "gpu", "config": {"image_size": 224, "batch_size": 128},
        "machine": {"gpu": [{"name": "made up"}]},
        "loadavg_start": ["0.1"], "loadavg_end": ["0.2"], "seconds": 1.0,
        "peak": {"peak_gflops_fp32": 1000.0, "peak_gflops_tf32": 4000.0,
                 "peak_gflops_bf16": 8000.0},
        "pytorch": {"results": [
            {"precision": "float32", "torch_compile": True,
             "images_per_second": 200.0},
            {"precision": "bfloat16 autocast", "torch_compile": True,
             "images_per_second": 400.0}]},
        "backends": {"torch": {"rows": [
            keras_row("float32", "auto", 100.0),
            keras_row("mixed_bfloat16", True, 200.0),
            {"precision": "float32", "jit_compile_requested": True,
             "skipped": "time budget"}]}},
        "skipped": ["keras/torch float32, jit_compile=True: time budget"],
        "errors": [],
    }
    rows = report["rows"] = run_gpu.table_rows(report)
    assert [r["framework"] for r in rows] == (
        ["pytorch"] * 2 + ["keras/torch"] * 2)
    # float32: 3 x 2 GFLOP x 100 img/s = 600 GFLOP/s, against TF32's 4000.
    assert rows[2] == {
        "framework": "keras/torch", "precision": "float32",
        "compilation": "jit_compile=False (Keras default)",
        "images_per_s": 100.0, "achieved_tflops": 0.6,
        "mfu": 0.15, "mfu_against": "tf32", "vs_torch_compile": 0.5}
    assert (rows[3]["mfu"], rows[3]["mfu_against"]) == (0.15, "bf16")
    assert rows[3]["vs_torch_compile"] == 0.5
    assert rows[0]["vs_torch_compile"] == 1.0
    table = run_gpu.markdown(report)
    assert table.count("| keras/torch |") == 2
    assert "Skipped: keras/torch float32, jit_compile=True" in table
    # Without a TF32 peak (a CPU), float32 rows are held to the fp32 one.
    del report["peak"]["peak_gflops_tf32"]
    assert run_gpu.table_rows(report)[2]["mfu"] == 0.6
