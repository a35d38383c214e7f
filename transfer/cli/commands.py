"""One function per `transfer` command: turn flags into library calls.

Results go to `args.stdout` (JSON, JSON lines, CSV or a table: `predict`
writes its rows as each batch finishes; `main` runs each command
with `sys.stdout` pointed at stderr, where Keras's progress bars then go);
notes for people go to stderr.
"""

import csv
import importlib.util
import ipaddress
import json
import logging
import os
import random
import sys

from transfer._io import check_writable  # light: no Keras
from transfer._io import missing_folders
from transfer.training import run_dir as run_dir_lib  # light: no Keras

logger = logging.getLogger(__name__)


# Files named in the note on what `predict` skipped in folders.
_MAX_NAMED = 3


def _out(args, data):
    """The command's result: one JSON line, alone on stdout."""
    print(json.dumps(data), file=args.stdout, flush=True)


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


def _remove_empty(folders):
    """Removes `folders` (deepest first) while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)  # refuses a folder that holds anything
        except OSError:
            return


def train(args):
    from transfer import run_config  # lazy: --help needs no Keras
    from transfer import workflow  # lazy: --help needs no Keras

    overrides = {
        "data": args.data,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "interpolation": args.interpolation,
        "sequence_length": args.sequence_length,
        "text_column": args.text_column,
        "text_pair_column": args.text_pair_column,
        "label_column": args.label_column,
        "batch_size": args.batch_size,
        "validation_split": args.validation_split,
        "split_file": args.split_file,
        "seed": args.seed,
        "weights": args.weights,
        "modality": args.modality,
        "augment": args.augment,
        "skip_bad_files": args.skip_bad_files,
        "distribute": args.distribute,
        "feature_cache_dir": args.feature_cache_dir,
        "precision": args.precision,
        "pooling": args.pooling,
        "lora_rank": args.lora_rank,
        "drop_path": args.drop_path,
    }
    config = run_config.resolve_config(
        args.config, overrides, epochs=args.epochs,
        learning_rates=args.learning_rate,
    )
    run_dir = args.output or _default_run_dir(config)
    logger.info("Training into %s", run_dir)
    created = missing_folders(run_dir)
    try:
        extra = {"force_resume": True} if args.force_resume else {}
        workflow.train_run(config, run_dir, verbose=_keras_verbose(args),
                           **extra)
    except BaseException:
        # A run that failed before writing anything leaves no empty folder;
        # one with checkpoints or logs stays, so rerunning resumes it.
        _remove_empty(created)
        raise
    with open(run_dir_lib.path(run_dir, run_dir_lib.MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    final = (manifest.get("stages") or [{}])[-1].get("metrics", {})
    _out(args, {
        "run_dir": run_dir,
        "model": run_dir_lib.path(run_dir, run_dir_lib.MODEL),
        "backend": manifest.get("backend"),
        "class_names": manifest.get("class_names"),
        "final_metrics": final,
        "seconds": manifest.get("seconds"),
    })


def evaluate(args):
    from transfer import evaluation_data  # lazy: --help needs no Keras
    from transfer import run_report  # lazy: --help needs no Keras
    from transfer import workflow  # lazy: --help needs no Keras

    model, config = workflow.load_run(args.run_dir)
    # Streamed: memory holds a few batches, whatever the folder's size.
    data = evaluation_data.labelled_dataset(
        args.data, model, config, verbose=_progress_verbose(args),
        run_dir=args.run_dir, skip_bad_files=args.skip_bad_files)
    _note_unreadable(args, data)
    output = args.output or run_dir_lib.path(args.run_dir, run_dir_lib.EVALUATION)
    metrics = run_report.write_run_report(
        args.run_dir, model, data, class_names=workflow.run_class_names(model),
        split="evaluation", output_dir=output,
    )
    metrics["data"] = args.data
    _out(args, metrics)


def _note_unreadable(args, data):
    """Names the images the preflight left out (`--skip-bad-files`)."""
    report = getattr(getattr(data, "dataset", None), "transfer_preflight", None)
    if report is not None and report.skip_bad_files:
        _note_skipped(args, [path for path, _ in report.bad])


def _note_skipped(args, bad):
    """Counts and names (the first few of) the files `--skip-bad-files`
    left out, on stderr."""
    if not bad:
        return
    named = ", ".join(bad[:_MAX_NAMED])
    more = len(bad) - _MAX_NAMED
    _note(args, (
        f"Skipped {len(bad)} file(s) that could not be read "
        f"(--skip-bad-files): {named}"
        + (f" and {more} more" if more > 0 else "")
    ))


def _progress_verbose(args):
    """Progress bars on stderr: live on a terminal, one line otherwise."""
    if args.quiet:
        return 0
    return 1 if sys.stderr.isatty() else 2


class _RowWriter:
    """Writes `predict`'s rows to stdout as each batch finishes.

    `json` streams one JSON array (closed even when the command fails, so
    the rows already written stay readable), `jsonl` one object a line,
    `csv` a header and one row per class.
    """

    def __init__(self, out, output_format, labelled=False):
        self.out = out
        self.format = output_format
        self.count = 0
        self._csv = None
        # --reject-below: each file's label ("unknown" or its best class).
        self.labelled = labelled
        if output_format == "csv":
            self._csv = csv.writer(out)
            self._csv.writerow(["file", "rank", "class", "probability"]
                               + (["label"] if labelled else []))

    def write(self, results):
        for result in results:
            if self.format == "json":
                self.out.write(("[" if not self.count else ", ")
                               + json.dumps(result))
            elif self.format == "jsonl":
                self.out.write(json.dumps(result) + "\n")
            else:
                for rank, p in enumerate(result["predictions"], start=1):
                    self._csv.writerow([result["file"], rank, p["class"],
                                        f"{p['probability']:.6f}"]
                                       + ([result["label"]] if self.labelled
                                          else []))
            self.count += 1
        self.out.flush()

    def close(self):
        if self.format == "json":
            self.out.write("]\n" if self.count else "[]\n")
        self.out.flush()


def predict(args):
    import keras  # lazy: --help needs no Keras

    from transfer import prediction  # lazy: --help needs no Keras
    from transfer import workflow  # lazy: --help needs no Keras
    from transfer.export import artifact  # lazy: --help needs no Keras

    if artifact.is_artifact(args.run_dir):
        # An exported file: its runtime, its own class names and resizing.
        model, config = artifact.open_artifact(args.run_dir), {}
    else:
        model, config = workflow.load_run(args.run_dir)
    modality = workflow.run_modality(model)
    # Text runs read CSV files row by row (the run's text columns).
    tables = [p for p in args.paths
              if modality == "text" and workflow.is_table(p)]
    listed = [p for p in args.paths if p not in tables]
    files = prediction.expand_files(listed, modality) if listed else []
    skipped = prediction.skipped_files(listed, modality)
    if skipped:
        named = ", ".join(skipped[:_MAX_NAMED])
        more = len(skipped) - _MAX_NAMED
        kinds = "images" if modality == "image" else ".txt files"
        _note(args, (
            f"Skipped {len(skipped)} file(s) in the folders that are not "
            f"{kinds}: {named}" + (f" and {more} more" if more > 0 else "")
        ))
    # The bar goes to stdout, which `main` points at stderr meanwhile.
    progress = keras.utils.Progbar(
        None if tables else len(files), verbose=_progress_verbose(args),
        unit_name="row" if tables else "file")
    writer = _RowWriter(args.stdout, args.format,
                        labelled=args.reject_below is not None)
    bad, done, failed = [], 0, True
    try:
        for batch in prediction.iter_predictions(
            model, tables + files, top_k=args.top_k,
            batch_size=args.batch_size,
            skip_bad_files=args.skip_bad_files,
            text_columns=workflow.text_columns(config),
            reject_below=args.reject_below,
        ):
            writer.write(batch.results)
            bad.extend(path for path, _ in batch.skipped)
            done += len(batch.results) + len(batch.skipped)
            progress.update(done)
        failed = False
    finally:
        # Rows already written stay written, and a JSON array is closed.
        if writer.count or not failed:
            writer.close()
        _note_skipped(args, bad)


def before_predict(args):
    """`--reject-below P` is a probability in (0, 1): checked before Keras
    loads (`serve` checks it in `before_serve`)."""
    value = getattr(args, "reject_below", None)
    if value is not None and not 0.0 < value < 1.0:
        raise ValueError(
            "--reject-below takes a probability strictly between 0 and 1, "
            "e.g. 0.6: inputs whose calibrated top probability is under it "
            f"are labelled 'unknown'. Received: --reject-below {value}"
        )


def before_export(args):
    """The export's folder must be writable: checked before Keras loads."""
    # The default file name depends on the format (transfer.export, which
    # imports Keras); the folder is what the check needs.
    check_writable(args.output or os.path.join(args.run_dir, run_dir_lib.EXPORT, "model"))


def export(args):
    from transfer import export as deploy  # lazy: --help needs no Keras
    from transfer import workflow  # lazy: --help needs no Keras

    # Format, backend and quantization are checked before the model loads;
    # `export_model` checks the path again before converting.
    deploy.check_export_request(args.format, args.quantize)
    _check_calibration_count(args)
    model, config = workflow.load_run(args.run_dir)
    path = args.output or os.path.join(
        args.run_dir, run_dir_lib.EXPORT, deploy.FILE_NAMES[args.format]
    )
    calibration = _calibration_images(args, model, config)
    evaluation = _export_evaluation(args, model, config)
    try:
        result = deploy.export_model(
            model, path, args.format, quantize=args.quantize,
            calibration=calibration, evaluation=evaluation)
    except deploy.AccuracyDropError as e:
        _out(args, dict(e.report, format=args.format, quantize=args.quantize,
                        written=False))
        raise
    _note(args, (
        f"Exported {args.format} to {result['path']}; parity vs the Keras "
        f"model on {result['num_samples']} sample inputs: max abs diff "
        f"{result['max_abs_diff']:.3g}"
    ))
    if "evaluation" in result:
        judged = result["evaluation"]
        _note(args, (
            f"On {judged['num_images']} labelled images: accuracy "
            f"{judged['artifact_accuracy']:.4f} (Keras "
            f"{judged['keras_accuracy']:.4f}), top-1 agreement "
            f"{judged['top1_agreement']:.4f}, "
            f"{judged['file_size_bytes']:,} bytes, batch-1 latency "
            f"{judged['latency_ms_batch1']:.2f} ms"
        ))
    result["class_names"] = workflow.run_class_names(model)
    _out(args, result)


def before_serve(args):
    """The extra, the limits, the run's model and the port: checked, and
    the port bound, before Keras loads."""
    from transfer.serving import server  # light: no Keras

    server.check_dependencies()
    before_predict(args)
    checks = (
        ("--max-request-mb", args.max_request_mb, 0 < args.max_request_mb),
        ("--max-image-pixels", args.max_image_pixels,
         args.max_image_pixels >= 1),
        ("--max-batch-size", args.max_batch_size,
         1 <= args.max_batch_size <= 1024),
        ("--batch-wait-ms", args.batch_wait_ms,
         0 <= args.batch_wait_ms <= 1000),
    )
    for flag, value, good in checks:
        if not good:
            raise ValueError(
                f"{flag} is out of range (--max-request-mb and "
                "--max-image-pixels above 0, --max-batch-size from 1 to "
                "1024, --batch-wait-ms from 0 to 1000). "
                f"Received: {flag} {value}"
            )
    server.check_run_dir(args.run_dir)
    args.socket = server.bind_socket(args.host, args.port)


def serve(args):
    from transfer.serving import server  # light: no Keras

    try:
        app = server.load_app(
            args.run_dir,
            max_request_bytes=int(args.max_request_mb * 1024 * 1024),
            max_image_pixels=args.max_image_pixels,
            max_batch_size=args.max_batch_size,
            max_delay=args.batch_wait_ms / 1000,
            reject_below=args.reject_below,
        )
    except BaseException:
        args.socket.close()
        raise
    server.listen(args.socket)  # connections queue from here on
    host, port = args.socket.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    _out(args, {"url": url, "run_dir": args.run_dir,
                "class_names": app.state.class_names})
    _note(args, (
        f"Serving {args.run_dir} on {url} (POST /predict, GET /health, "
        "the page at /); Ctrl+C stops it."))
    if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
        _note(args, (
            f"Listening on {host}, not only this machine: anyone who can "
            "reach it can use the model (there is no authentication)."))
    server.run(app, args.socket, access_log=bool(args.verbose))
    _note(args, "Stopped.")


def _check_calibration_count(args):
    if args.quantize == "int8" and not 100 <= args.calibration_images <= 500:
        raise ValueError(
            "--calibration-images takes 100 to 500 images. Received: "
            f"--calibration-images {args.calibration_images}"
        )


def _calibration_images(args, model, config):
    """Representative images for `--quantize int8`, else `None`."""
    from transfer import evaluation_data  # lazy: --help needs no Keras

    if args.quantize != "int8":
        return None
    if args.calibration_data:
        # Refuses a folder whose classes differ from the run's.
        x, _ = evaluation_data.load_labelled_data(
            args.calibration_data, model)
        chosen = random.Random(0).sample(
            range(len(x)), min(len(x), args.calibration_images))
        images = x[sorted(chosen)]
        source = f"'{args.calibration_data}'"
    else:
        images = evaluation_data.training_images(
            args.run_dir, config, model, max_images=args.calibration_images)
        source = "the run's training split"
    if len(images) < args.calibration_images:
        raise ValueError(
            f"--quantize int8 calibrates on {args.calibration_images} images "
            f"(--calibration-images), but {source} holds {len(images)}. "
            "Pass --calibration-data DIR with more images of the run's "
            "classes, or fewer --calibration-images (at least 100). "
            f"Received: {len(images)} calibration image(s)"
        )
    _note(args, f"Calibrating on {len(images)} images of {source}.")
    return images


def _export_evaluation(args, model, config):
    """Labelled images to judge the export on, or `None`."""
    from transfer import evaluation_data  # lazy: --help needs no Keras
    from transfer import export as deploy  # lazy, as the others

    if not (args.data or args.quantize or args.max_accuracy_drop is not None):
        return None
    if args.data:
        x, y = evaluation_data.load_labelled_data(
            args.data, model, config, run_dir=args.run_dir)
    else:
        data_dir = (config or {}).get("data")
        if not data_dir or not os.path.exists(data_dir) or not (
            config.get("validation_split")
        ):
            if args.max_accuracy_drop is None:
                _note(args, (
                    f"Not judging the export: the run '{args.run_dir}' has "
                    "no validation split here; pass --data DIR to judge it."
                ))
                return None
            raise ValueError(
                f"The run '{args.run_dir}' has no validation split to judge "
                "the export on. Pass --data DIR, a labelled folder of the "
                f"run's classes. Received: data={data_dir!r}"
            )
        x, y = evaluation_data.load_labelled_data(
            data_dir, model, config, validation_only=True,
            run_dir=args.run_dir)
    if not len(x):
        raise ValueError(
            "No labelled images to judge the export on. Pass --data DIR. "
            f"Received: data={args.data!r}"
        )
    return deploy.Evaluation(x, y, args.max_accuracy_drop)


def before_doctor(args):
    """The extra, the threshold and the folder: checked before Keras
    loads."""
    if importlib.util.find_spec("cleanlab") is None:
        raise ImportError(
            "`transfer doctor` finds label errors with cleanlab, which is "
            'not installed. Install it with: pip install '
            '"keras-transfer[doctor]"'
        )
    if not 0 < args.similarity <= 1:
        raise ValueError(
            "--similarity is a cosine similarity in (0, 1], e.g. 0.95. "
            f"Received: --similarity {args.similarity}"
        )
    if not 0 <= args.validation_split < 1:
        raise ValueError(
            "--validation-split is a fraction in [0, 1). "
            f"Received: --validation-split {args.validation_split}"
        )
    if not os.path.isdir(args.data):
        raise FileNotFoundError(
            f"Data folder '{args.data}' does not exist. Pass a folder with "
            "one subfolder per class, or with train/ and val/ folders of "
            f"them. Received: --data {args.data}"
        )
    check_writable(os.path.join(args.output, "summary.json"))


def doctor(args):
    from transfer.doctor import inspect  # lazy: --help needs no Keras

    diagnosis = inspect.inspect_data(
        args.data, args.backbone, output_dir=args.output,
        similarity=args.similarity, fix_split=args.fix_split,
        validation_split=args.validation_split, seed=args.seed,
        cache_dir=None if args.no_cache else (args.cache_dir or "auto"),
        verbose=_progress_verbose(args),
    )
    summary = diagnosis.summary
    found = ", ".join(f"{count} {issue.replace('_', ' ')}"
                      for issue, count in summary["issues"].items() if count)
    _note(args, (
        f"{summary['files']} files: {found or 'no issues found'}. Report: "
        f"{summary['outputs']['report']}; every issue: "
        f"{summary['outputs']['issues']}."
    ))
    _out(args, summary)


def backbones(args):
    # lazy: --help needs no Keras
    from transfer.cli import backbone_table as table

    rows = table.backbone_table(count_params=args.params)
    if args.format == "json":
        _out(args, rows)
        return
    columns = ("name", "modality", "source", "parameters", "image_size",
               "interpolation", "blocks", "weights_offline")
    cells = [[("-" if row[c] is None else
               f"{row[c]:,}" if c == "parameters" else str(row[c]))
              for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells))
              for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
          file=args.stdout)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)),
              file=args.stdout)


def weights_fetch(args):
    # lazy: --help needs no Keras
    from transfer.cli import backbone_table as table

    row = table.fetch(args.name)
    _out(args, row)
    if row["status"] == "mismatch":
        raise RuntimeError(
            f"Weights of {args.name} at {row['path']} have sha256 "
            f"{row['sha256']}, expected {row['expected']}: delete the file "
            "and fetch again."
        )


def weights_verify(args):
    # lazy: --help needs no Keras
    from transfer.cli import backbone_table as table

    rows = table.verify_weights(args.name)
    _out(args, rows)
    bad = [r["name"] for r in rows if r["status"] == "mismatch"]
    if bad:
        raise RuntimeError(
            f"sha256 mismatch for {bad}: the cached files are corrupt or not "
            "the pinned release; delete them and run `transfer weights "
            "fetch NAME`."
        )


def _report_default_data(args, model, config, verbose):
    """`(data, split)` of the run's own data: a split root's test/ (or
    val/) folder, else the run's validation split, else `None`."""
    from transfer import evaluation_data  # lazy: --help needs no Keras
    from transfer.data import layout  # lazy, as the others
    from transfer.workflow import is_table as workflow_is_table  # lazy

    if workflow_is_table(config["data"]):  # a text run's CSV file
        if not config.get("validation_split"):
            return None, "validation"
        return evaluation_data.labelled_dataset(
            config["data"], model, config, validation_only=True,
            run_dir=args.run_dir), "validation"
    found = layout.detect_layout(config["data"])
    if found.is_split and (found.test or found.val):
        split = "test" if found.test else "validation"
        return evaluation_data.labelled_dataset(
            config["data"], model, config, verbose=verbose,
            run_dir=args.run_dir, skip_bad_files=args.skip_bad_files), split
    if not config.get("validation_split"):
        return None, "validation"
    return evaluation_data.labelled_dataset(
        config["data"], model, config, validation_only=True,
        verbose=verbose, run_dir=args.run_dir,
        skip_bad_files=args.skip_bad_files), "validation"


def report(args):
    from transfer import evaluation_data  # lazy: --help needs no Keras
    from transfer import run_report  # lazy: --help needs no Keras
    from transfer import workflow  # lazy: --help needs no Keras

    model, config = workflow.load_run(args.run_dir)
    data, split = None, "validation"
    # Streamed: memory holds a few batches, whatever the folder's size.
    verbose = _progress_verbose(args)
    if args.data:
        data = evaluation_data.labelled_dataset(
            args.data, model, config, verbose=verbose, run_dir=args.run_dir,
            skip_bad_files=args.skip_bad_files)
        split = "evaluation"
    elif config and config.get("data") and (
        os.path.isdir(config["data"]) or os.path.isfile(config["data"])
    ):
        data, split = _report_default_data(args, model, config, verbose)
    _note_unreadable(args, data)
    if data is None:
        _note(args, "No labelled data (pass --data DIR): curves only.")
    metrics = run_report.write_run_report(
        args.run_dir, model, data,
        class_names=workflow.run_class_names(model), split=split,
    )
    _note(args, f"Report: {os.path.join(args.run_dir, 'report', 'report.html')}")
    keys = ("split", "accuracy", "macro_avg", "files")
    _out(args, {k: metrics[k] for k in keys if k in metrics})
