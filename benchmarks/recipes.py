"""Compare fine-tuning recipes on the image example's data, offline.

EfficientNet-Lite0 (real ImageNet weights), Fashion-MNIST with 100 labels per
class, 96 px, the split of `examples/image_finetune.py`, the same total epoch
budget for every recipe. Recipes: the two-stage default, gradual unfreezing
(top 3, 6, then all 9 blocks), discriminative learning rates (layer-wise
decay), and each of these plus MixUp or CutMix. Results (test accuracy on the
10,000 test images, seconds) are appended to a JSON file after every run, so
an interrupted benchmark keeps what it finished.

    python benchmarks/recipes.py --output benchmarks/results/recipes.json
    python benchmarks/recipes.py --configs two_stage,discriminative --seeds 0
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import transfer  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import image_finetune  # noqa: E402

BASES = ("two_stage", "gradual", "discriminative")
# Training options (issue 18), applied to every stage of a base recipe:
# `two_stage@adamw_wd0.05` is the default recipe with AdamW, weight decay
# 0.05; `two_stage@early3` stops a stage after 3 epochs without a better
# validation accuracy.
OPTIONS = {
    "adamw_wd0.05": {"optimizer": "adamw", "weight_decay": 0.05},
    "adamw_wd1e-4": {"optimizer": "adamw", "weight_decay": 1e-4},
    "early3": {"patience": 3},
}
CONFIGS = BASES + tuple(
    f"{base}+{aug}" for aug in ("mixup", "cutmix") for base in BASES
) + tuple(f"two_stage@{option}" for option in OPTIONS)


def make_recipe(config, head_epochs, finetune_epochs, *, layer_decay=0.7):
    """The `Recipe` of one config name, within the epoch budget."""
    config, _, option = config.partition("@")
    if option and option not in OPTIONS:
        raise ValueError(f"Unknown option {option!r}. Allowed: {sorted(OPTIONS)}")
    recipe = _base_recipe(config, head_epochs, finetune_epochs, layer_decay)
    if not option:
        return recipe
    return transfer.Recipe(tuple(
        transfer.Stage.from_config({**s.get_config(), **OPTIONS[option]})
        for s in recipe
    ))


def _base_recipe(config, head_epochs, finetune_epochs, layer_decay):
    base, _, aug = config.partition("+")
    augment = (aug,) if aug else ()
    head = transfer.Stage("head", head_epochs, 1e-3, 0, augment=augment)
    if base == "two_stage":
        tail = [transfer.Stage("finetune", finetune_epochs, 3e-4, "all",
                               schedule="cosine", augment=augment)]
    elif base == "discriminative":
        tail = [transfer.Stage("finetune", finetune_epochs, 3e-4, "all",
                               schedule="cosine", layer_decay=layer_decay,
                               augment=augment)]
    elif base == "gradual":
        # ULMFiT-style: unfreeze from the top, a third of the budget each.
        parts = [finetune_epochs // 3] * 3
        parts[-1] += finetune_epochs - sum(parts)
        tail = [
            transfer.Stage(f"top{blocks}", epochs, 3e-4, blocks,
                           schedule="cosine", augment=augment)
            for blocks, epochs in zip((3, 6, "all"), parts, strict=True)
        ]
    else:
        raise ValueError(f"Unknown config {config!r}. Allowed: {CONFIGS}")
    return transfer.Recipe((head, *tail))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", default="3,15", help="HEAD,FINETUNE")
    parser.add_argument("--output", default="benchmarks/results/recipes.json")
    parser.add_argument("--run-root", default="runs/bench_recipes")
    args = parser.parse_args(argv)
    head_epochs, finetune_epochs = (int(p) for p in args.epochs.split(","))
    configs = args.configs.split(",")
    for config in configs:
        make_recipe(config, head_epochs, finetune_epochs)  # fail early
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    results = []
    if os.path.exists(args.output):
        with open(args.output) as f:
            results = json.load(f)
    done = {(r["config"], r["seed"], r["epochs"]) for r in results}
    for seed in seeds:
        example_args = image_finetune.parse_args(
            ["--no-baseline", "--seed", str(seed)]
        )
        keras.utils.set_random_seed(seed)
        data = image_finetune.load_data(example_args)
        for config in configs:
            if (config, seed, args.epochs) in done:
                continue
            keras.utils.set_random_seed(seed)
            recipe = make_recipe(config, head_epochs, finetune_epochs)
            run_dir = os.path.join(
                args.run_root, f"{config}-seed{seed}-{time.strftime('%H%M%S')}"
            )
            _, _, accuracy, seconds = image_finetune.run(
                example_args, data, "imagenet", recipe, run_dir
            )
            with open("/proc/loadavg") as f:
                load = f.read().split()[:3]
            results.append({
                "config": config, "seed": seed, "epochs": args.epochs,
                "test_accuracy": round(accuracy, 4),
                "seconds": round(seconds, 1), "loadavg_after": load,
                "backend": keras.config.backend(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "recipe": recipe.get_config(),
            })
            with open(args.output, "w") as f:
                json.dump(results, f, indent=1)
            print(json.dumps({k: results[-1][k] for k in
                              ("config", "seed", "test_accuracy", "seconds")}),
                  flush=True)
            keras.utils.clear_session()


if __name__ == "__main__":
    main()
