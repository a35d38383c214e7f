"""Where a training step's time goes: Keras on torch against native PyTorch.

    KERAS_BACKEND=torch python benchmarks/torch_profile.py keras --output k.json
    <peer venv>/bin/python benchmarks/torch_profile.py native --output n.json

Same model family as `benchmarks/run.py`'s fine-tune (MobileNetV3Small,
random init: throughput does not depend on the weights), image size, batch
and threads. Each mode runs a few training steps under `torch.profiler`
and writes the operators with the most self CPU time, the step's total, and
the share of time in copies (`aten::copy_`, `aten::contiguous`, `aten::clone`)
and in batch normalization, so the two tables can be read side by side.
`keras` also times its variants (`--variants`) interleaved in one process:
Keras's default, `channels_last_views` (`transfer._torch_layout`: no
layout copies around each convolution) and `jit_compile=True` (Keras runs
`torch.compile` on the train step).
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

COPIES = ("aten::copy_", "aten::contiguous", "aten::clone")


def _loadavg():
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def _table(profile, steps, top):
    import torch  # noqa: F401

    events = profile.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    share = {
        "copies": sum(e.self_cpu_time_total for e in events
                      if e.key in COPIES) / total,
        "batch_norm": sum(e.self_cpu_time_total for e in events
                          if "batch_norm" in e.key) / total,
        "convolution": sum(e.self_cpu_time_total for e in events
                           if "conv" in e.key or "mkldnn" in e.key) / total,
    }
    return {
        "profiled_steps": steps,
        "self_cpu_ms_per_step": round(total / 1e3 / steps, 1),
        "share": {k: round(v, 3) for k, v in share.items()},
        "top_ops": [
            {"op": e.key, "calls_per_step": round(e.count / steps, 1),
             "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps,
                                           2),
             "share": round(e.self_cpu_time_total / total, 3)}
            for e in rows[:top]
        ],
    }


def keras_mode(args):
    import keras
    import numpy as np
    import torch

    import transfer

    size, batch, steps = args.image_size, args.batch_size, args.steps
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (steps * batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, len(x)).astype("int32")

    def build(variant):
        model = transfer.build_classifier(
            "mobilenet_v3_small", 10, weights=None, image_size=size)
        transfer.set_trainable_blocks(model, "all")
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"], jit_compile=variant == "jit_compile")
        return model

    def throughput(variant):
        from transfer import _torch_layout

        _torch_layout.use_channels_last_views(variant == "channels_last_views")
        model = build(variant)
        times = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter())

        started = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=args.epochs,
                  callbacks=[Timer()], verbose=0)
        seconds = sorted(np.diff(times))
        keras.backend.clear_session()
        return {"images_per_s": round(len(x) / float(np.median(seconds)), 1),
                "first_epoch_s": round(times[0] - started, 1)}

    result = {"mode": "keras", "keras": keras.__version__,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "image_size": size, "batch_size": batch,
              "loadavg_start": _loadavg(), "variants": {}}
    for _ in range(args.repeats):
        for variant in args.variants:
            result["variants"].setdefault(variant, []).append(
                throughput(variant))
    if args.profile:
        # As `transfer` trains: channels-last views on (transfer._torch_layout).
        from transfer import _torch_layout

        _torch_layout.use_channels_last_views(True)
        result["profiled_variant"] = "channels_last_views"
        model = build("default")
        model.fit(x[:2 * batch], y[:2 * batch], batch_size=batch, verbose=0)
        n = min(steps, 4)
        with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            model.fit(x[:n * batch], y[:n * batch], batch_size=batch,
                      verbose=0, shuffle=False)
        result["profile"] = _table(profile, n, args.top)
    result["loadavg_end"] = _loadavg()
    return result


def _native_model(channels_last):
    import torch
    from torch_peer import import_torchvision

    torchvision = import_torchvision()
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torchvision.__version__


def native_mode(args):
    import torch

    size, batch, n = args.image_size, args.batch_size, 4
    model, version = _native_model(channels_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    x = torch.randn(n * batch, 3, size, size).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (n * batch,))

    def step(i):
        images = x[i * batch:(i + 1) * batch].contiguous(
            memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), y[i * batch:(i + 1) * batch]).backward()
        optimizer.step()

    for i in range(2):
        step(i)
    with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for i in range(n):
            step(i)
    return {"mode": "native", "torch": torch.__version__,
            "torchvision": version, "threads": torch.get_num_threads(),
            "memory_format": "channels_last", "image_size": size,
            "batch_size": batch, "loadavg_start": _loadavg(),
            "profile": _table(profile, n, args.top),
            "loadavg_end": _loadavg()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["keras", "native"])
    parser.add_argument("--output")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12,
                        help="batches per epoch in the throughput runs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants",
                        default="default,channels_last_views,jit_compile",
                        type=lambda s: [v for v in s.split(",") if v])
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    result = (keras_mode if args.mode == "keras" else native_mode)(args)
    text = json.dumps(result, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
