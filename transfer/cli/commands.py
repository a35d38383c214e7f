"""One function per `transfer` command: turn flags into library calls.

Results go to stdout (JSON, CSV or a table); notes for people go to stderr.
"""

import csv
import json
import logging
import os
import sys

logger = logging.getLogger(__name__)


def _out(data):
    # One line, last on stdout: Keras prints progress and "Found N files"
    # there too, so a reader takes the last line.
    print(json.dumps(data))


def _note(args, text):
    if not args.quiet:
        print(text, file=sys.stderr)


def _keras_verbose(args):
    return 0 if args.quiet else 1


def _default_run_dir(config):
    def stem(path):
        return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]

    backbone = config["backbone"].replace("hub:", "")
    return os.path.join("runs", f"{stem(config['data'])}-{stem(backbone)}")


def train(args):
    from transfer import run_config
    from transfer import workflow

    overrides = {
        "data": args.data,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "sequence_length": args.sequence_length,
        "batch_size": args.batch_size,
        "validation_split": args.validation_split,
        "seed": args.seed,
        "weights": args.weights,
        "modality": args.modality,
        "augment": args.augment,
        "skip_bad_files": args.skip_bad_files,
        "distribute": args.distribute,
        "feature_cache_dir": args.feature_cache_dir,
    }
    config = run_config.resolve_config(
        args.config, overrides, epochs=args.epochs,
        learning_rates=args.learning_rate,
    )
    run_dir = args.output or _default_run_dir(config)
    logger.info("Training into %s", run_dir)
    extra = {"force_resume": True} if args.force_resume else {}
    workflow.train_run(config, run_dir, verbose=_keras_verbose(args), **extra)
    with open(os.path.join(run_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    final = (manifest.get("stages") or [{}])[-1].get("metrics", {})
    _out({
        "run_dir": run_dir,
        "model": os.path.join(run_dir, "model.keras"),
        "backend": manifest.get("backend"),
        "class_names": manifest.get("class_names"),
        "final_metrics": final,
        "seconds": manifest.get("seconds"),
    })


def evaluate(args):
    from transfer import run_report
    from transfer import workflow

    model, config = workflow.load_run(args.run_dir)
    data = workflow.load_labelled_data(args.data, model, config)
    output = args.output or os.path.join(args.run_dir, "evaluation")
    metrics = run_report.write_run_report(
        args.run_dir, model, data, class_names=workflow.run_class_names(model),
        split="evaluation", output_dir=output,
    )
    metrics["data"] = args.data
    _out(metrics)


def predict(args):
    from transfer import workflow

    model, _ = workflow.load_run(args.run_dir)
    results = workflow.predict_files(model, args.paths, top_k=args.top_k)
    if args.format == "json":
        _out(results)
        return
    writer = csv.writer(sys.stdout)
    writer.writerow(["file", "rank", "class", "probability"])
    for result in results:
        for rank, p in enumerate(result["predictions"], start=1):
            writer.writerow(
                [result["file"], rank, p["class"], f"{p['probability']:.6f}"]
            )


def export(args):
    from transfer import export as deploy
    from transfer import workflow

    # Format, backend and quantization are checked before the model loads.
    deploy.check_export_request(args.format, args.quantize)
    model, _ = workflow.load_run(args.run_dir)
    path = args.output or os.path.join(
        args.run_dir, "export", deploy.FILE_NAMES[args.format]
    )
    result = deploy.export_model(model, path, args.format,
                                 quantize=args.quantize)
    _note(args, (
        f"Exported {args.format} to {result['path']}; parity vs the Keras "
        f"model on {result['num_samples']} sample inputs: max abs diff "
        f"{result['max_abs_diff']:.3g}"
    ))
    result["class_names"] = workflow.run_class_names(model)
    _out(result)


def backbones(args):
    from transfer.cli import backbone_table as table

    rows = table.backbone_table(count_params=args.params)
    if args.format == "json":
        _out(rows)
        return
    columns = ("name", "modality", "source", "parameters", "image_size",
               "blocks", "weights_offline")
    cells = [[("-" if row[c] is None else
               f"{row[c]:,}" if c == "parameters" else str(row[c]))
              for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells))
              for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def weights_fetch(args):
    from transfer.cli import backbone_table as table

    row = table.fetch(args.name)
    _out(row)
    if row["status"] == "mismatch":
        raise RuntimeError(
            f"Weights of {args.name} at {row['path']} have sha256 "
            f"{row['sha256']}, expected {row['expected']}: delete the file "
            "and fetch again."
        )


def weights_verify(args):
    from transfer.cli import backbone_table as table

    rows = table.verify_weights(args.name)
    _out(rows)
    bad = [r["name"] for r in rows if r["status"] == "mismatch"]
    if bad:
        raise RuntimeError(
            f"sha256 mismatch for {bad}: the cached files are corrupt or not "
            "the pinned release; delete them and run `transfer weights "
            "fetch NAME`."
        )


def report(args):
    from transfer import run_report
    from transfer import workflow

    model, config = workflow.load_run(args.run_dir)
    data, split = None, "validation"
    if args.data:
        data = workflow.load_labelled_data(args.data, model, config)
        split = "evaluation"
    elif config and config.get("data") and os.path.isdir(config["data"]):
        if config.get("validation_split"):
            data = workflow.load_labelled_data(
                config["data"], model, config, validation_only=True
            )
    if data is None:
        _note(args, "No labelled data (pass --data DIR): curves only.")
    metrics = run_report.write_run_report(
        args.run_dir, model, data,
        class_names=workflow.run_class_names(model), split=split,
    )
    _note(args, f"Report: {os.path.join(args.run_dir, 'report', 'report.html')}")
    _out({k: metrics[k] for k in ("split", "accuracy", "macro_avg", "files")
          if k in metrics})
