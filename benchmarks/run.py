"""`transfer` side by side with hand-written Keras and native PyTorch.

    python benchmarks/run.py --quick --output bench.json

One invocation runs, each backend in its own subprocess
(`benchmarks/keras_worker.py`):
1. a 5-epoch head stage, `fit_recipe` (features cached) against the
   Keras-guide loop with the frozen backbone in the loop: wall time, test
   accuracy (EfficientNet-Lite0, real offline ImageNet weights);
2. full fine-tune throughput, `fit_recipe` against a hand-written
   `model.fit` on the same model (MobileNetV3Small, random init);
3. the same fine-tune against native PyTorch + torchvision (same
   architecture, image size, batch, threads), in a virtual environment
   this script creates (`torch==2.14.1 torchvision==0.29.1`, from the pip
   index or a local mirror; `--peer-venv` to place it);
4. all of it on TensorFlow, JAX and torch;
5. achieved GFLOP/s against the machine's measured fp32/bf16 peak matmul;
6. time to the first training step (build, load weights, compile, step);
plus the speed switches (bf16, `tf.data`, XLA) on the hand-written loop.

Absolute times drift on shared machines: compare the ratios, which come
from one run, and mind the load average recorded in the JSON.

`--device gpu` runs the GPU benchmark instead (`benchmarks/run_gpu.py`:
fine-tune img/s per backend in float32 and mixed bfloat16 against PyTorch
eager and `torch.compile`, model FLOP utilisation, inside `--budget-s`);
`--smoke` runs it at tiny sizes, on the CPU with `--device cpu`.
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BACKENDS = ("tensorflow", "jax", "torch")
PARTS = ("first_step", "head_stage", "fine_tune")
# The peer runs the torch Keras runs on (2.13.0, the CPU wheel `make install`
# pins), so both sides call the same kernels. torchvision 0.28.0 (its
# release for torch 2.13) and pillow (which torchvision imports) come
# without their dependencies (torchvision's would pull
# torch's CUDA build); its Linux wheel is built for CUDA, and beside a CPU
# torch only its C operators (nms ...) fail to load, which the model code
# does not use (`torch_peer.import_torchvision`).
PEER_PACKAGES = ("torch==2.13.0",)
PEER_NO_DEPS = ("torchvision==0.28.0", "numpy", "pillow")
DEFAULT_PEER_VENV = os.path.join(
    os.path.expanduser("~"), ".cache", "keras-transfer", "bench",
    "torch-2.13.0")

QUICK = {
    "head_image_size": 96, "head_epochs": 5, "labels_per_class": 30,
    "test_images": 500, "image_size": 160, "batch_size": 32,
    "steps_per_epoch": 12, "steps_per_epoch_by_backend": {"jax": 3},
    "switch_steps": 4, "epochs": 3, "repeats": 2,
    "matmul_size": 1024, "matmul_repeats": 3,
}
FULL = {
    **QUICK, "head_image_size": 128, "labels_per_class": 100,
    "test_images": 2000, "steps_per_epoch": 40,
    "steps_per_epoch_by_backend": {"jax": 8}, "switch_steps": 8, "epochs": 4,
    "repeats": 2,
    "matmul_size": 2048, "matmul_repeats": 5,
}
SWITCHES = {
    "tensorflow": ["mixed_bfloat16", "tf_data", "xla"],
    "jax": ["keras_convolutions", "mixed_bfloat16", "tf_data"],
    "torch": ["keras_convolutions", "keras_layer_calls", "mixed_bfloat16",
              "tf_data"],
}


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return None


def _run(command, env=None, timeout=3600):
    """(exit status, seconds, last line of stderr) of `command`; status 124
    when it ran past `timeout` seconds."""
    started = time.perf_counter()
    # Its own process group, so that a time limit also ends what it started
    # (torch.compile's compiler workers).
    with subprocess.Popen(command, env=env, cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as error:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # it had just ended
                pass
            process.communicate()
            if isinstance(error, KeyboardInterrupt):
                raise
            return (124, time.perf_counter() - started,
                    f"stopped at its time limit ({timeout:.0f} s)")
    if process.returncode != 0:
        sys.stderr.write(stdout[-3000:] + stderr[-3000:])
    lines = stderr.strip().splitlines()
    return (process.returncode, time.perf_counter() - started,
            lines[-1] if lines else "")


def _json_step(command, config, env=None, timeout=3600):
    """Runs a worker that reads a config file and writes a JSON file."""
    with tempfile.TemporaryDirectory() as tmp:
        config_path = os.path.join(tmp, "config.json")
        output_path = os.path.join(tmp, "out.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        code, seconds, message = _run(
            command + [config_path, output_path], env=env, timeout=timeout)
        result = {}
        if os.path.exists(output_path):
            with open(output_path) as f:
                result = json.load(f)
        if code != 0:
            result["error"] = f"exit status {code}: {message}"
        result["seconds"] = round(seconds, 1)
        return result


def ensure_peer_venv(path):
    """The PyTorch peer's interpreter, creating its venv on first use."""
    python = os.path.join(path, "bin", "python")
    stamp = os.path.join(path, "installed.txt")
    if os.path.exists(stamp):
        return python
    print(f"Creating the PyTorch peer's venv in {path} ...", flush=True)
    pip = [python, "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    for command in ([sys.executable, "-m", "venv", path],
                    pip + list(PEER_PACKAGES),
                    pip + ["--no-deps", *PEER_NO_DEPS],
                    [python, os.path.join(HERE, "torch_peer.py"), "check"]):
        code, _, _ = _run(command, timeout=1800)
        if code != 0:
            raise RuntimeError(
                f"Could not set up the PyTorch peer ({' '.join(command)}). "
                f"Make {' and '.join(PEER_PACKAGES + PEER_NO_DEPS)} "
                "installable (pip index or --find-links), or pass "
                "--skip-peer.")
    with open(stamp, "w") as f:
        f.write(" ".join(PEER_PACKAGES + PEER_NO_DEPS) + "\n")
    return python


def summarize(backend, result, peak, peer):
    """The per-backend keys the issue asks for."""
    head = result.get("head_stage", {})
    tune = result.get("fine_tune", {})
    ours = tune.get("transfer_images_per_s")
    achieved = tune.get("achieved_gflops")
    fp32, bf16 = peak.get("peak_gflops_fp32"), peak.get("peak_gflops_bf16")

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    return {
        "head_stage_speedup": head.get("head_stage_speedup"),
        "head_stage_speedup_warm": head.get("head_stage_speedup_warm"),
        "head_stage_accuracy_delta": head.get("head_stage_accuracy_delta"),
        "feature_pass_fraction_of_inference": head.get(
            "feature_pass_fraction_of_inference"),
        "fit_overhead_ratio": tune.get("fit_overhead_ratio"),
        "fit_overhead_s_per_epoch": tune.get("fit_overhead_s_per_epoch"),
        "vs_pytorch_ratio": ratio(ours, peer.get("images_per_s")),
        "fraction_of_peak": ratio(achieved, fp32),
        # Where bf16 runs slower than fp32 (no bf16 matrix instructions),
        # a fraction of its "peak" means nothing.
        "fraction_of_peak_bf16": (ratio(achieved, bf16)
                                  if bf16 and fp32 and bf16 > fp32 else None),
        "time_to_first_step_s": result.get("first_step", {}).get(
            "time_to_first_step_s"),
        "peak_gflops_fp32": fp32,
        "peak_gflops_bf16": bf16,
        "transfer_images_per_s": ours,
        "hand_written_images_per_s": tune.get("hand_written_images_per_s"),
        "pytorch_images_per_s": peer.get("images_per_s"),
        "achieved_gflops": achieved,
        "switches_images_per_s": tune.get("switches_images_per_s"),
    }


def markdown(report):
    rows = [
        ("head stage: naive / cached wall time (x)", "head_stage_speedup"),
        ("head stage: naive / warm-cache rerun wall time (x)",
         "head_stage_speedup_warm"),
        ("head stage: accuracy cached - naive (points)",
         "head_stage_accuracy_delta"),
        ("head stage: feature pass / backbone inference img/s",
         "feature_pass_fraction_of_inference"),
        ("fine-tune: transfer / hand-written img/s", "fit_overhead_ratio"),
        ("fine-tune: seconds fit_recipe adds per epoch",
         "fit_overhead_s_per_epoch"),
        ("fine-tune: transfer / PyTorch img/s", "vs_pytorch_ratio"),
        ("fine-tune: transfer img/s", "transfer_images_per_s"),
        ("fine-tune: hand-written img/s", "hand_written_images_per_s"),
        ("fine-tune: PyTorch img/s", "pytorch_images_per_s"),
        ("achieved GFLOP/s (fine-tune)", "achieved_gflops"),
        ("fraction of fp32 peak", "fraction_of_peak"),
        ("fraction of bf16 peak", "fraction_of_peak_bf16"),
        ("time to first step (s)", "time_to_first_step_s"),
    ]
    backends = list(report["backends"])
    lines = ["| | " + " | ".join(backends) + " |",
             "|---|" + "---|" * len(backends)]
    for label, key in rows:
        values = [report["backends"][b]["summary"].get(key) for b in backends]
        lines.append(f"| {label} | " + " | ".join(
            "-" if v is None else str(v) for v in values) + " |")
    switches = sorted({k for b in backends for k in
                       (report["backends"][b]["summary"]
                        .get("switches_images_per_s") or {})})
    for name in switches:
        values = [(report["backends"][b]["summary"]
                   .get("switches_images_per_s") or {}).get(name)
                  for b in backends]
        lines.append(f"| hand-written img/s, {name} | " + " | ".join(
            "-" if v is None else str(v) for v in values) + " |")
    peak = report["peak"]
    lines.append("")
    lines.append(
        f"Peak matmul: {peak.get('peak_gflops_fp32')} GFLOP/s fp32, "
        f"{peak.get('peak_gflops_bf16')} GFLOP/s bf16 "
        f"({peak.get('threads')} threads). Load average "
        f"{report['loadavg_start']} at start, {report.get('loadavg_end')} "
        "at end.")
    return "\n".join(lines) + "\n"


def backend_env(backend):
    """The environment of a worker subprocess on Keras backend `backend`."""
    return dict(os.environ, KERAS_BACKEND=backend,
                PYTHONPATH=os.pathsep.join(
                    [ROOT, os.environ.get("PYTHONPATH", "")]))


def _write(path, report):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a few minutes in all")
    parser.add_argument("--output",
                        help="JSON file; the table goes beside it as .md. "
                        "Defaults to benchmarks/results/benchmark.json "
                        "(benchmark_gpu.json with --device gpu, "
                        "benchmark_smoke.json with --smoke)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--peer-venv", default=DEFAULT_PEER_VENV)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: the GPU benchmark (benchmarks/run_gpu.py)")
    parser.add_argument("--smoke", action="store_true",
                        help="the GPU benchmark at tiny sizes, on --device "
                        "(cpu: no GPU needed), to try every code path")
    parser.add_argument("--budget-s", type=float, default=480,
                        help="GPU benchmark: seconds it may take; what does "
                        "not fit is skipped and the JSON says so")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated parts of the Keras worker "
                             f"to run, of {','.join(PARTS)}")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {BACKENDS}")
    unknown = sorted(set(args.parts.split(",")) - set(PARTS) - {""})
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {PARTS}")
    if args.device == "gpu" or args.smoke:
        import run_gpu  # benchmarks/run_gpu.py, beside this script

        return run_gpu.main(args, backends)
    args.output = args.output or os.path.join("benchmarks", "results",
                                              "benchmark.json")
    config = dict(QUICK if args.quick else FULL)
    config["switches"] = SWITCHES
    config["parts"] = [p for p in args.parts.split(",") if p]
    report = {
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "gpu": None},
        "loadavg_start": _loadavg(),
        "config": config,
    }
    peer_script = os.path.join(HERE, "torch_peer.py")
    print("Measuring peak matmul ...", flush=True)
    report["peak"] = _json_step([sys.executable, peer_script, "peak"], config)
    peer = {}
    if not args.skip_peer:
        python = ensure_peer_venv(args.peer_venv)
        print("PyTorch peer ...", flush=True)
        peer = _json_step([python, peer_script, "peer"], config)
    report["pytorch"] = peer
    report["backends"] = {}
    for backend in backends:
        print(f"Keras on {backend} ...", flush=True)
        result = _json_step(
            [sys.executable, os.path.join(HERE, "keras_worker.py")],
            config, env=backend_env(backend))
        result["summary"] = summarize(backend, result, report["peak"], peer)
        report["backends"][backend] = result
        _write(args.output, report)  # partial results survive a crash
    report["loadavg_end"] = _loadavg()
    table = markdown(report)
    _write(args.output, report)
    with open(os.path.splitext(args.output)[0] + ".md", "w") as f:
        f.write(table)
    print(table)
    return 0 if all("error" not in r for r in report["backends"].values()) \
        else 1


if __name__ == "__main__":
    sys.exit(main())
