"""The native PyTorch peer of `benchmarks/run.py`, and the peak matmul.

    python benchmarks/torch_peer.py peak config.json out.json
    <peer venv>/bin/python benchmarks/torch_peer.py peer config.json out.json

`peak`: fp32 and bf16 matrix multiply GFLOP/s with PyTorch's CPU kernels
(oneDNN; bf16 runs on AVX512-BF16 or AMX where the CPU has them), the best
of several repeats; on the GPU, plus TF32, with `"device": "cuda"` in the
config (`run.py --device gpu`). `peer`: full fine-tune throughput of
torchvision's MobileNetV3Small (random init), a hand-written training
loop with Adam, in `train()` mode, on in-memory tensors, in the default
memory format and in channels-last; same image size, batch and thread
count as the Keras side.
Needs only torch (and torchvision for `peer`), no Keras.
"""

import json
import sys
import time

import torch


def peak(config):
    n = config["matmul_size"]
    device = torch.device(config.get("device", "cpu"))
    result = {"threads": torch.get_num_threads(), "matmul_size": n,
              "torch": torch.__version__, "device": str(device)}
    # On a GPU, float32 also runs as TF32 on the tensor cores (what
    # TensorFlow, JAX and torch's cuDNN convolutions do by default).
    kinds = [("fp32", torch.float32, False), ("bf16", torch.bfloat16, False)]
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        result.update(gpu=properties.name,
                      compute_capability=f"{properties.major}."
                                         f"{properties.minor}",
                      gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                      cuda=torch.version.cuda)
        kinds.append(("tf32", torch.float32, True))
    for name, dtype, tf32 in kinds:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        _synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b)  # warm-up
        _synchronize(device)
        best = time.perf_counter() - started
        # A CPU without bf16 matrix instructions (AVX2 only) emulates bf16
        # at ~1 GFLOP/s: one 2048^2 product takes 17 s. The warm-up is then
        # the figure, instead of minutes of repeats.
        slow = best > 1.0
        for _ in range(0 if slow else config["matmul_repeats"]):
            _synchronize(device)
            started = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b)
            _synchronize(device)
            seconds = (time.perf_counter() - started) / 4
            best = min(best, seconds)
        result[f"peak_gflops_{name}"] = round(2 * n**3 / best / 1e9, 1)
    return result


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def import_torchvision():
    """torchvision, also where its C operators do not load (its Linux
    wheel is a CUDA build; beside a CPU torch, registering `nms` fails).
    The models need none of those operators."""
    try:
        import torchvision
    except RuntimeError:
        import types

        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations")
        import torchvision
    return torchvision


def _throughput(config, channels_last):
    torchvision = import_torchvision()

    torch.manual_seed(0)
    size, batch = config["image_size"], config["batch_size"]
    steps = config["steps_per_epoch"]
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10)
    # Normalized inputs, as torchvision models expect them: raw [0, 255]
    # pixels into a random-init network blow up its activations.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    # An epoch's worth of images, reshuffled and sliced into batches every
    # epoch, as Keras's `fit` does with arrays.
    x = (torch.rand(steps * batch, 3, size, size) - mean) / std
    y = torch.randint(0, 10, (steps * batch,))
    memory_format = (torch.channels_last if channels_last
                     else torch.contiguous_format)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    def epoch():
        order = torch.randperm(len(x))
        for i in range(steps):
            index = order[i * batch:(i + 1) * batch]
            images = x[index].contiguous(memory_format=memory_format)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), y[index])
            loss.backward()
            optimizer.step()

    epoch()  # warm-up
    seconds = []
    for _ in range(config["epochs"] - 1):
        started = time.perf_counter()
        epoch()
        seconds.append(time.perf_counter() - started)
    return steps * batch / sorted(seconds)[len(seconds) // 2]


def peer(config):
    torchvision = import_torchvision()

    result = {"torch": torch.__version__, "torchvision": torchvision.__version__,
              "threads": torch.get_num_threads(),
              "model": "torchvision mobilenet_v3_small (random init)",
              "image_size": config["image_size"],
              "batch_size": config["batch_size"]}
    runs = {"contiguous": [], "channels_last": []}
    for _ in range(config["repeats"]):
        for name in runs:
            runs[name].append(_throughput(config, name == "channels_last"))
    for name, values in runs.items():
        result[f"{name}_images_per_s"] = [round(v, 1) for v in values]
    best = max(runs, key=lambda k: sorted(runs[k])[len(runs[k]) // 2])
    result["best_format"] = best
    result["images_per_s"] = round(sorted(runs[best])[len(runs[best]) // 2], 1)
    return result


if __name__ == "__main__":
    if sys.argv[1] == "check":  # the peer's venv works
        import_torchvision().models.mobilenet_v3_small(weights=None)
        sys.exit(0)
    mode, config_path, output_path = sys.argv[1:4]
    with open(config_path) as f:
        config = json.load(f)
    result = {"peak": peak, "peer": peer}[mode](config)
    with open(output_path, "w") as f:
        json.dump(result, f, indent=2)
