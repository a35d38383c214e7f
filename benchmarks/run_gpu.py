"""`python benchmarks/run.py --device gpu`: Keras fine-tune throughput on a
GPU against PyTorch with `torch.compile`, in one command.

    python benchmarks/run.py --device gpu                # 480 s budget
    python benchmarks/run.py --device gpu --budget-s 300
    python benchmarks/run.py --device cpu --smoke        # every code path,
                                                         # tiny, no GPU

One invocation, inside `--budget-s` seconds (default 480):
1. checks every backend, one subprocess each, side by side
   (`gpu_worker.py check`): what it computes on, its framework versions and,
   where it sees no GPU, what is missing. With `--device gpu` a backend
   without a GPU is left out, and the run stops there (exit status 2) when
   no backend sees one. Records the GPU as `nvidia-smi` names it;
2. peak matmul on the device, fp32, TF32 and bf16 (torch, measured:
   `torch_peer.py peak`);
3. the PyTorch peer (`torch_compile_peer.py`: timm's efficientnet_lite0,
   eager and `torch.compile`, float32 and bf16 autocast);
4. per backend (`gpu_worker.py fine_tune`): Keras fine-tune images per
   second of EfficientNet-Lite0 in float32 and mixed_bfloat16, `jit_compile`
   as Keras's default for the backend, and `jit_compile=True` where that
   differs; the same architecture, image size and batch as the peer;
5. per row: achieved TFLOP/s (3 x forward FLOPs x images/s), model FLOP
   utilisation against the measured peak of the row's math (TF32 for
   float32 on a GPU, where all three frameworks run float32 convolutions by
   default; bf16 for bfloat16), and the ratio to the `torch.compile` peer at
   the same precision.

Each step may take a share of the time left; a row that would not fit is
skipped, and `skipped` in the JSON says what and why. The JSON and a
markdown table beside it go to `--output`.
"""

import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import run as bench  # benchmarks/run.py: worker calls, load average

HERE = bench.HERE
GPU = {"image_size": 224, "batch_size": 128, "steps_per_epoch": 16,
       "epochs": 4, "matmul_size": 8192, "matmul_repeats": 5,
       "peer_steps": 50, "peer_warmup": 10}
SMOKE = {"image_size": 32, "batch_size": 4, "steps_per_epoch": 2,
         "epochs": 2, "matmul_size": 512, "matmul_repeats": 2,
         "peer_steps": 2, "peer_warmup": 1}
# The share of the time left each step may take: the torch rows include
# torch.compile, which compiles longest.
WEIGHTS = {"pytorch": 3, "tensorflow": 2, "jax": 2, "torch": 3}
GRACE_S = 30  # for a worker to start and write what it measured


def nvidia_smi():
    """The GPUs `nvidia-smi` lists, or why it could not say."""
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
             "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"error": f"nvidia-smi: {error}"}
    if done.returncode:
        return {"error": f"nvidia-smi exit status {done.returncode}: "
                         f"{done.stderr.strip()[-300:]}"}
    return [dict(zip(("name", "memory", "driver"),
                     (value.strip() for value in line.split(",")),
                     strict=False))
            for line in done.stdout.strip().splitlines()]


def _worker(part, backend, config, timeout):
    return bench._json_step(
        [sys.executable, os.path.join(HERE, "gpu_worker.py"), part],
        config, env=bench.backend_env(backend), timeout=timeout)


def check_backends(backends, timeout):
    """`gpu_worker.py check` on every backend at once."""
    with concurrent.futures.ThreadPoolExecutor(max(1, len(backends))) as pool:
        futures = {b: pool.submit(_worker, "check", b, {}, timeout)
                   for b in backends}
        return {b: future.result() for b, future in futures.items()}


def pytorch_peer(config, timeout):
    """`torch_compile_peer.py` at the Keras rows' sizes."""
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "peer.json")
        code, seconds, message = bench._run([
            sys.executable, os.path.join(HERE, "torch_compile_peer.py"),
            "--device", config["device"],
            "--image-size", str(config["image_size"]),
            "--batch-size", str(config["batch_size"]),
            "--steps", str(config["peer_steps"]),
            "--warmup", str(config["peer_warmup"]), "--output", output,
        ], timeout=timeout)
        result = {"results": []}
        if os.path.exists(output):
            with open(output) as f:
                result = json.load(f)
    if code:
        result["error"] = f"exit status {code}: {message}"
    result["seconds"] = round(seconds, 1)
    measured = {(r["precision"], r["torch_compile"])
                for r in result["results"]}
    result["skipped"] = [
        f"pytorch {precision}, torch.compile={compiled}: "
        f"{result.get('error')}"
        for precision in ("float32", "bfloat16 autocast")
        for compiled in (False, True) if (precision, compiled) not in measured]
    return result


def table_rows(report):
    """One row per measurement: img/s, TFLOP/s, MFU, ratio to the peer."""
    peak = report.get("peak", {})
    rows, flops = [], None
    for r in report["pytorch"].get("results", []):
        rows.append({"framework": "pytorch", "precision": r["precision"],
                     "compilation": "torch.compile" if r["torch_compile"]
                     else "eager", "images_per_s": r["images_per_second"]})
    for backend, result in report["backends"].items():
        for r in result.get("rows", []):
            if "skipped" in r:
                continue
            flops = r["forward_gflops_per_image"]
            auto = " (Keras default)" if r["jit_compile_requested"] == "auto" \
                else ""
            rows.append({"framework": f"keras/{backend}",
                         "precision": r["precision"],
                         "compilation": f"jit_compile={r['jit_compile']}"
                                        f"{auto}",
                         "images_per_s": r["images_per_s"]})
    compiled = {("bfloat16" in r["precision"]): r["images_per_s"]
                for r in rows if r["compilation"] == "torch.compile"}
    for row in rows:
        bf16, ips = "bfloat16" in row["precision"], row["images_per_s"]
        name = "bf16" if bf16 else (
            "tf32" if peak.get("peak_gflops_tf32") else "fp32")
        achieved = 3 * flops * ips if flops and ips else None
        reference = compiled.get(bf16)
        row.update(
            achieved_tflops=achieved and round(achieved / 1e3, 3),
            mfu=achieved and peak.get(f"peak_gflops_{name}") and round(
                achieved / peak[f"peak_gflops_{name}"], 4),
            mfu_against=name,
            vs_torch_compile=round(ips / reference, 3)
            if ips and reference else None)
    return rows


def markdown(report):
    columns = ("framework", "precision", "compilation", "images_per_s",
               "achieved_tflops", "mfu", "vs_torch_compile")
    lines = ["| framework | precision | compilation | img/s | TFLOP/s | MFU "
             "| img/s / torch.compile |", "|---" * len(columns) + "|"]
    for row in report["rows"]:
        lines.append("| " + " | ".join(
            "-" if row[c] is None else str(row[c]) for c in columns) + " |")
    peak, config = report.get("peak", {}), report["config"]
    gpus = report["machine"]["gpu"]
    if isinstance(gpus, list):
        gpus = "; ".join(f"{g.get('name')} ({g.get('memory')}, driver "
                         f"{g.get('driver')})" for g in gpus)
    lines += [
        "",
        f"Device: {report['device']}; GPU: {gpus}. "
        f"EfficientNet-Lite0 (random init), {config['image_size']} px, batch "
        f"{config['batch_size']}. Peak matmul (torch, "
        f"{peak.get('matmul_size')}^2): {peak.get('peak_gflops_fp32')} "
        f"GFLOP/s fp32, {peak.get('peak_gflops_tf32')} TF32, "
        f"{peak.get('peak_gflops_bf16')} bf16. MFU is against TF32 (fp32 "
        "without a GPU) for float32 rows, bf16 for bfloat16 rows.",
        f"Load average {report['loadavg_start']} at start, "
        f"{report.get('loadavg_end')} at end; {report.get('seconds')} s.",
        "Versions: " + "; ".join(
            f"{backend}: " + ", ".join(
                f"{name} {version}"
                for name, version in check.get("versions", {}).items())
            for backend, check in report.get("checks", {}).items()),
    ]
    lines += [f"Skipped: {why}" for why in report["skipped"]]
    lines += [f"Error: {why}" for why in report["errors"]]
    return "\n".join(lines) + "\n"


def _missing_gpus(report, backends):
    """Leaves out backends without a GPU; their reasons, by backend."""
    missing = {}
    for backend in backends:
        check = report["checks"][backend]
        if check.get("accelerator") != "gpu":
            missing[backend] = check.get("missing") or check.get("error")
            report["errors"].append(f"keras/{backend}: no GPU: "
                                    f"{missing[backend]}")
    for backend, why in missing.items():
        print(f"{backend}: no GPU: {why}", file=sys.stderr, flush=True)
    return [b for b in backends if b not in missing]


def main(args, backends):
    config = dict(SMOKE if args.smoke else GPU,
                  device="cuda" if args.device == "gpu" else "cpu",
                  require_gpu=args.device == "gpu")
    started = time.time()
    deadline = started + args.budget_s
    output = args.output or os.path.join(
        "benchmarks", "results",
        "benchmark_smoke.json" if args.smoke else "benchmark_gpu.json")
    report = {
        "mode": "smoke" if args.smoke else "full", "device": args.device,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "budget_s": args.budget_s,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "gpu": nvidia_smi()},
        "loadavg_start": bench._loadavg(), "config": config,
        "skipped": [], "errors": [], "pytorch": {}, "backends": {},
    }
    print(f"Checking {', '.join(backends)} ...", flush=True)
    report["checks"] = check_backends(backends, min(180, args.budget_s))
    if args.device == "gpu":
        backends = _missing_gpus(report, backends)
        if not backends:
            report["loadavg_end"] = bench._loadavg()
            bench._write(output, report)
            print(f"--device gpu: no backend sees a GPU (see above); "
                  f"nothing measured. Wrote {output}", file=sys.stderr)
            return 2
    print("Measuring peak matmul ...", flush=True)
    report["peak"] = bench._json_step(
        [sys.executable, os.path.join(HERE, "torch_peer.py"), "peak"],
        config, timeout=max(5, min(120, deadline - time.time())))
    steps = ["pytorch"] + backends
    for index, step in enumerate(steps):
        left = deadline - time.time()
        share = left * WEIGHTS[step] / sum(WEIGHTS[s] for s in steps[index:])
        print(f"{step}: up to {share:.0f} s ...", flush=True)
        if share < 5:
            report["skipped"].append(f"{step}: time budget ({left:.0f} s "
                                     "left)")
            continue
        if step == "pytorch":
            result = report["pytorch"] = pytorch_peer(config, share)
            report["skipped"] += result["skipped"]
        else:
            result = _worker("fine_tune", step,
                             dict(config, deadline=time.time() + share),
                             share + GRACE_S)
            report["backends"][step] = result
            report["skipped"] += [
                f"keras/{step} {r['precision']}, jit_compile="
                f"{r['jit_compile_requested']}: {r['skipped']}"
                for r in result.get("rows", []) if "skipped" in r]
        error = result.get("error", "")
        if error.startswith("exit status 124"):
            # The time budget, not a failure: what it measured is kept, and
            # the peer's `skipped` already lists what it did not measure.
            if step != "pytorch":
                report["skipped"].append(f"keras/{step}: {error}, during "
                                         "a row")
        elif error:
            report["errors"].append(f"{step}: {error}")
        bench._write(output, report)  # partial results survive a crash
    report["rows"] = table_rows(report)
    report["loadavg_end"] = bench._loadavg()
    report["seconds"] = round(time.time() - started, 1)
    table = markdown(report)
    bench._write(output, report)
    with open(os.path.splitext(output)[0] + ".md", "w") as f:
        f.write(table)
    print(table)
    return 1 if report["errors"] else 0
