"""The cost of attention on this CPU: vision transformers against a CNN.

Small random-init configurations of the real KerasHub classes of the
`vit`, `deit`, `dinov2`, `dinov3`, `siglip` and `clip` families (saved as
local preset folders and built with `transfer.build_classifier`, exactly as
a user's preset would be) and the registered CNN closest to them in
parameters, also random init, at the same image size and batch, on
TensorFlow. Per model: parameters, training-step throughput (every block
trainable, Adam, img/s) and inference throughput (`predict_on_batch`,
img/s), and both as a ratio to the CNN's. The load average is recorded
before and after. Throughput does not depend on the weights' values, so
random init measures what pretrained weights would; NO model here is
pretrained, and no accuracy is measured (real weights need a download).

    python benchmarks/transformer_throughput.py --output benchmarks/results/transformer_throughput.json
    python benchmarks/transformer_throughput.py --smoke   # tiny, < 1 minute

`--smoke` only shows that the script runs; its figures mean nothing.
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import transfer  # noqa: E402
from transfer import _backend  # noqa: E402

FAMILIES = ("vit", "deit", "dinov2", "dinov3", "siglip", "clip")
# Registered CNNs (random init needs no download) to match in parameters.
CNNS = ("efficientnet_lite0", "mobilenet_v2", "mobilenet_v3_small",
        "mobilenet_v3_large", "efficientnet_b0")
NUM_CLASSES = 10


def _loadavg():
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--cnns", default=",".join(CNNS),
                        help="candidate CNNs; the one closest in parameters "
                             "to the transformers' mean is measured")
    parser.add_argument("--image-size", type=int, default=112,
                        help="pixels, a multiple of 16 and 14 (default 112)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steps after the warm-up ones")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="vit and dinov3 against small_cnn, 56 px, 2 "
                             "layers, width 32, batch 4, 2 steps: checks "
                             "the script runs")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.batch_size, args.layers = 56, 4, 2
        args.width, args.heads, args.steps, args.warmup = 32, 2, 2, 1
        args.families, args.cnns = "vit,dinov3", "small_cnn"
    return args


def _patch(family, image_size):
    """The patch size of a family's configuration: 14 for DINOv2 (its
    presets'), else 16, halved until the image holds at least 4x4."""
    patch = 14 if family == "dinov2" else 16
    while image_size // patch < 4 and patch % 2 == 0:
        patch //= 2
    if image_size % patch:
        raise SystemExit(
            f"--image-size {image_size} is not a multiple of {family}'s "
            f"patch size {patch}: pick a multiple of 16 and 14 (112, 224)")
    return patch


def small_backbone(family, args):
    """A small random-init configuration of the family's KerasHub class."""
    import keras_hub

    models = keras_hub.models
    shape = (args.image_size, args.image_size, 3)
    common = dict(num_layers=args.layers, num_heads=args.heads,
                  hidden_dim=args.width, patch_size=_patch(family, shape[0]),
                  image_shape=shape)
    mlp = 4 * args.width
    if family == "vit":
        return models.ViTBackbone(mlp_dim=mlp, **common)
    if family == "deit":
        return models.DeiTBackbone(intermediate_dim=mlp, **common)
    if family == "dinov2":
        return models.DINOV2Backbone(intermediate_dim=mlp,
                                     position_embedding_shape=shape, **common)
    if family == "dinov3":
        return models.DINOV3Backbone(intermediate_dim=mlp, **common)
    cls = (models.SigLIPVisionEncoder if family == "siglip"
           else models.CLIPVisionEncoder)
    return cls(intermediate_dim=mlp, **common)


def _backbone_params(model):
    return int(model.get_layer(model.transfer_metadata["backbone"])
               .count_params())


def throughput(model, args):
    """`(train_img_s, predict_img_s)` on random images, all blocks
    trainable."""
    transfer.set_trainable_blocks(model, "all")
    # What fit_recipe compiles with on this backend and device (no XLA for
    # TensorFlow on a CPU; always on JAX, where False would run unjitted).
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True),
                  jit_compile=_backend.auto_jit_compile())
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.image_size, args.image_size, 3)
    x = rng.uniform(0, 255, size=shape).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(args.batch_size,))
    rates = []
    for step in (lambda: model.train_on_batch(x, y),
                 lambda: model.predict_on_batch(x)):
        for _ in range(args.warmup):
            step()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        seconds = time.perf_counter() - start
        rates.append(args.steps * args.batch_size / seconds)
    return rates


def measure(name, build, args, report):
    keras.utils.set_random_seed(0)
    model = build()
    train, predict = throughput(model, args)
    row = {
        "model": name,
        "weights": "random init (NOT pretrained)",
        "backbone_params": _backbone_params(model),
        "params": int(model.count_params()),
        "train_img_s": round(train, 2),
        "predict_img_s": round(predict, 2),
    }
    report["models"].append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
    keras.backend.clear_session()
    return row


def closest_cnn(candidates, target, args):
    """`(name, params)` of the candidate CNN closest to `target` backbone
    parameters (built with random init at the benchmark's size)."""
    found = []
    for name in candidates:
        backbone, _, _ = transfer.build_backbone(
            name, weights=None, image_size=args.image_size)
        found.append((abs(backbone.count_params() - target), name,
                      int(backbone.count_params())))
        keras.backend.clear_session()
    _, name, params = min(found)
    return name, params, {n: p for _, n, p in found}


def main(argv=None):
    args = parse_args(argv)
    report = {
        "benchmark": "transformer_throughput",
        "backend": keras.config.backend(),
        "keras": keras.__version__,
        "cpu_count": os.cpu_count(),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "load_average_before": _loadavg(),
        "models": [],
    }
    families = [f for f in args.families.split(",") if f]
    with tempfile.TemporaryDirectory() as root:
        for family in families:
            folder = os.path.join(root, f"small_{family}")
            small_backbone(family, args).save_to_preset(folder)
            keras.backend.clear_session()
            measure(family, lambda folder=folder: transfer.build_classifier(
                folder, NUM_CLASSES, weights=None), args, report)
    rows = report["models"]
    target = float(np.mean([r["backbone_params"] for r in rows]))
    cnn, params, candidates = closest_cnn(
        [c for c in args.cnns.split(",") if c], target, args)
    report["cnn"] = {"name": cnn, "backbone_params": params,
                     "candidates_backbone_params": candidates,
                     "transformers_mean_backbone_params": round(target)}
    base = measure(cnn, lambda: transfer.build_classifier(
        cnn, NUM_CLASSES, weights=None, image_size=args.image_size),
        args, report)
    for row in rows:
        row["train_ratio_to_cnn"] = round(
            row["train_img_s"] / base["train_img_s"], 3)
        row["predict_ratio_to_cnn"] = round(
            row["predict_img_s"] / base["predict_img_s"], 3)
    report["load_average_after"] = _loadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)),
                    exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
