"""The plain-PyTorch peer of `benchmarks/precision.py`: fine-tune throughput
of EfficientNet-Lite0 in a hand-written PyTorch loop, eager and with
`torch.compile`, in float32 and bfloat16 autocast.

The architecture is timm's `efficientnet_lite0` (`pip install timm`; the
`bench` extra) with random weights: throughput does not depend on the
weights, and nothing here is called pretrained. Same input size, batch
size and optimizer (Adam, all layers training, BatchNorm frozen as
`transfer` freezes it) as the Keras runs; synthetic batches already on the
device, so the figure is the model's step rate, not the input pipeline's.

    python benchmarks/torch_compile_peer.py --device cuda --output benchmarks/results/torch_compile_peer.json
    python benchmarks/torch_compile_peer.py --device cpu --steps 5 --warmup 2   # a smoke run

Prints (and with `--output` writes) JSON: one result per (precision,
compile) with images per second, plus the load average before and after.
"""

import argparse
import json
import os
import time


def _loadavg():
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def _freeze_batchnorm(model, torch):
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)


def measure(args, precision, compiled):
    """Images per second of `args.steps` training steps after a warm-up."""
    import timm
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = timm.create_model("efficientnet_lite0", pretrained=False,
                              num_classes=args.classes).to(device)
    model.train()
    _freeze_batchnorm(model, torch)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=3e-4)
    step_model = torch.compile(model) if compiled else model
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size,
                    device=device)
    y = torch.randint(0, args.classes, (args.batch_size,), device=device)
    dtype = torch.bfloat16 if precision == "bfloat16" else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(step_model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    started = time.perf_counter()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "framework": f"torch {torch.__version__}",
        "model": "timm efficientnet_lite0 (random weights)",
        "device": str(device),
        "precision": "float32" if dtype is None else "bfloat16 autocast",
        "torch_compile": compiled,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "images_per_second": round(args.steps * args.batch_size / seconds, 1),
        "warmup_seconds": round(warmup_seconds, 1),
        "final_loss_finite": bool(torch.isfinite(loss).item()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--compile", default="false,true",
                        help="torch.compile settings to run: false,true")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    _check(args.device)
    report = {"loadavg_before": _loadavg(), "results": [],
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for precision in args.precisions.split(","):
        for compiled in args.compile.split(","):
            result = measure(args, precision, compiled.strip() == "true")
            print(json.dumps(result), flush=True)
            report["results"].append(result)
            _write(args.output, report)  # partial results survive a kill
    report["loadavg_after"] = _loadavg()
    print(_write(args.output, report))


def _check(device):
    """Fails at once, saying what is missing, before any model is built."""
    try:
        import timm  # noqa: F401
        import torch
    except ImportError as error:
        raise SystemExit(
            f"torch_compile_peer.py needs torch and timm ({error}): "
            "pip install 'keras-transfer[bench]' (timm==1.0.31)") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {device}: torch {torch.__version__} sees no GPU ("
            + ("a CPU-only build" if torch.version.cuda is None else
               "torch.cuda.is_available() is False: check the driver")
            + ")")


def _write(path, report):
    text = json.dumps(report, indent=1)
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
