"""`transfer` on the command line: argparse, then library calls.

Exit codes: `0` success, `2` a usage error or bad input (a `ValueError`,
`TypeError` or missing file from the library's checks), `1` a failure while
running. Errors are one line on stderr, in the command line's words
(`transfer.cli.messages`); `--debug` shows the traceback. The result alone
goes to stdout; progress bars and notes go to stderr.

Parsing needs no Keras: `--help`, `--version` and usage errors answer at
once, and the library is loaded (`transfer._startup.load_library`) only
when a command runs. Keep module-level imports here light.
"""

import argparse
import contextlib
import logging
import os
import sys

from transfer import _startup
from transfer.cli import commands
from transfer.cli import messages

# `transfer serve`'s limits: transfer.serving.app's defaults, repeated so
# that `--help` needs no Keras (tests/test_serve.py checks they agree).
SERVE_DEFAULTS = {
    "max_request_mb": 10,
    "max_image_pixels": 40_000_000,
    "max_batch_size": 8,
    "batch_wait_ms": 5,
}

# What `transfer train` uses when neither a flag nor the config file sets an
# option: `transfer.run_config.DEFAULTS` and `two_stage_recipe()`, repeated
# so that `--help` needs no Keras (tests/test_cli.py checks they agree).
TRAIN_DEFAULTS = {
    "epochs": "3,15",
    "learning_rate": "0.001,0.0003",
    "batch_size": 32,
    "validation_split": 0.2,
    "seed": 1337,
    "sequence_length": 128,
    "text_column": "text",
    "label_column": "label",
    "weights": "pretrained",
    "modality": "auto",
    "distribute": "none",
    "precision": "float32",
    "drop_path": 0.0,
}

# `transfer doctor`'s defaults: transfer.doctor's, repeated so that `--help`
# needs no Keras (tests/test_doctor.py checks they agree).
DOCTOR_DEFAULTS = {
    "backbone": "efficientnet_lite0",
    "output": "doctor",
    "similarity": 0.95,
}

EPILOG = """examples:
  transfer train --data flowers/ --backbone efficientnet_lite0 --output runs/flowers
  transfer train --data flowers/ --backbone efficientnet_lite0 --config recipe.yaml --epochs 2,5
  transfer evaluate runs/flowers --data flowers_test/
  transfer predict runs/flowers rose.jpg more_photos/ --top-k 3 --format csv
  transfer export runs/flowers --format onnx
  transfer report runs/flowers
  transfer serve runs/flowers --port 8000
  transfer doctor --data flowers/ --fix-split
  transfer backbones
  transfer weights fetch efficientnet_lite0
  transfer weights verify

The backend is chosen by KERAS_BACKEND (tensorflow, jax, torch).
Results go to stdout (one JSON line, or CSV/JSON lines/a table); progress to stderr.
Exit codes: 0 success, 2 usage error or bad input, 1 failure while running.
"""

SUBCOMMAND_EXAMPLES = {
    "train": """examples:
  transfer train --data flowers/ --backbone efficientnet_lite0
  transfer train --data flowers/ --backbone efficientnet_lite0 --config recipe.yaml --output runs/f
  transfer train --data imagenette/ --backbone efficientnet_lite0   # train/, val/ (+ test/) folders: used as given
  transfer train --data reviews/ --backbone minilm_l6 --epochs 2,3   # text: one folder of .txt per class
  transfer train --data reviews.csv --backbone minilm_l6 --text-column review --label-column stars
  transfer train --data nli.csv --backbone hub:roberta_base_en --text-column premise --text-pair-column hypothesis
  transfer train --data flowers/ --backbone efficientnet_lite0 --distribute data_parallel   # every GPU

recipe.yaml holds `stages` plus any top-level option (flags override it):
  backbone: efficientnet_lite0
  image_size: 160
  batch_size: 32
  stages:
    - {name: head, epochs: 3, learning_rate: 1.0e-3}
    - {name: finetune, epochs: 10, learning_rate: 3.0e-4, trainable_blocks: all, schedule: cosine}
""",
    "evaluate": """examples:
  transfer evaluate runs/flowers --data flowers_test/
  transfer evaluate runs/flowers --data flowers_test/ --output reports/test
  transfer evaluate runs/imagenette --data imagenette/   # its test/ folder (else val/)
  transfer evaluate runs/flowers --data scraped/ --skip-bad-files
  transfer evaluate runs/nli --data nli_test.csv   # text runs: the run's CSV columns
""",
    "predict": """examples:
  transfer predict runs/flowers rose.jpg tulip.png
  transfer predict runs/flowers photos/ --top-k 3 --format csv > predictions.csv
  transfer predict runs/flowers big_folder/ --format jsonl --skip-bad-files > predictions.jsonl
  transfer predict runs/nli pairs.csv --format csv   # text runs: a CSV with the run's text column(s)
  transfer predict runs/flowers/export/model.onnx photos/ --top-k 3   # an exported file alone
  transfer predict runs/flowers photos/ --reject-below 0.6   # "unknown" when unsure or unlike training
""",
    "export": """examples:
  transfer export runs/flowers --format keras
  transfer export runs/flowers --format saved_model
  transfer export runs/flowers --format onnx --output flowers.onnx
  KERAS_BACKEND=tensorflow transfer export runs/flowers --format litert --quantize dynamic
  transfer export runs/flowers --format onnx --quantize int8 --max-accuracy-drop 0.01
""",
    "serve": """examples:
  transfer serve runs/flowers                   # http://127.0.0.1:8000/ (this machine only)
  transfer serve runs/flowers --port 0          # any free port: stdout's JSON line names it
  curl -F image=@rose.jpg http://127.0.0.1:8000/predict
  curl -H 'Content-Type: application/json' -d '{"image": "'$(base64 -w0 rose.jpg)'", "top_k": 3}' \\
       http://127.0.0.1:8000/predict
  curl http://127.0.0.1:8000/health

Needs the serve extra: pip install "keras-transfer[serve]".
""",
    "doctor": """examples:
  transfer doctor --data flowers/                       # doctor/report.html, issues.csv, projector/
  transfer doctor --data flowers/ --fix-split           # + doctor/split.json without leakage
  transfer train --data flowers/ --backbone efficientnet_lite0 --split-file doctor/split.json
  transfer doctor --data imagenette/ --backbone runs/imagenette   # a run's trained features
  tensorboard --logdir doctor/projector                 # the embeddings, with thumbnails

Needs the doctor extra: pip install "keras-transfer[doctor]".
""",
    "backbones": """examples:
  transfer backbones
  transfer backbones --no-params --format json
""",
    "weights": """examples:
  transfer weights fetch efficientnet_lite0
  transfer weights verify
  transfer weights verify minilm_l6
""",
    "report": """examples:
  transfer report runs/flowers                      # the run's validation split (or its data's test/ folder)
  transfer report runs/flowers --data flowers_test/
  transfer report runs/flowers --data scraped/ --skip-bad-files
""",
}


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common(subcommand=False):
    """`--debug`, `--quiet`, `--verbose`, before or after the command.

    A subcommand's copies default to SUPPRESS: a plain default there would
    overwrite `transfer --debug train ...`'s value.
    """
    default = argparse.SUPPRESS if subcommand else False
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of an error")
    volume = parent.add_mutually_exclusive_group()
    volume.add_argument("--quiet", "-q", action="store_true", default=default,
                        help="no progress bars, warnings and errors only")
    volume.add_argument("--verbose", "-v", action="store_true",
                        default=default, help="log every step")
    parent.add_argument(
        "--no-compilation-cache", action="store_true", default=default,
        help="JAX backend: do not read or write the persistent compilation "
             "cache in the user cache directory")
    return parent


class _Version(argparse.Action):
    """`--version`: `transfer.__version__`, and Keras's from its metadata.

    Nothing heavy is imported: `importlib.metadata` reads Keras's version.
    """

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest=dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib import metadata

        try:
            keras_version = metadata.version("keras")
        except metadata.PackageNotFoundError:
            keras_version = "not installed"
        python = ".".join(map(str, sys.version_info[:3]))
        # The package itself, already imported (`import transfer` here would
        # be an import of every layer, for import-linter).
        version = sys.modules["transfer"].__version__
        print(f"transfer {version} (keras {keras_version}, Python {python})")
        parser.exit()


def _subparser(subparsers, name, help_text, parents):
    return subparsers.add_parser(
        name, help=help_text, description=help_text, parents=parents,
        epilog=SUBCOMMAND_EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _csv(kind):
    def parse(text):
        try:
            return [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, one per "
                f"stage (e.g. 3,10); received {text!r}"
            ) from None

    return parse


def build_parser():
    """The `transfer` argument parser, with one subparser per command."""
    common = [_common(subcommand=True)]
    parser = _Parser(
        prog="transfer", parents=[_common()], epilog=EPILOG,
        description="Transfer learning for Keras 3 from the command line.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version,
                        help="show the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=_Parser)
    sub.required = True

    p = _subparser(sub, "train", "train a classifier on a folder of classes",
                   common)
    d = TRAIN_DEFAULTS
    need = p.add_argument_group(
        "required (a flag, or the key in the --config file)")
    need.add_argument("--data", metavar="DIR",
                      help="folder with one subfolder per class, or with "
                      "train/ and val/ (valid/, validation/) folders of "
                      "them; for text, also a .csv file (--text-column, "
                      "--label-column)")
    need.add_argument("--backbone", metavar="NAME",
                      help="registered name (see `transfer backbones`), "
                      "hub:<preset>, preset folder or .keras file")
    p.add_argument("--config", metavar="FILE", help="recipe/config file "
                   "(.yaml or .json); flags win over it")
    p.add_argument("--output", metavar="RUN_DIR", help="run directory "
                   "(default: runs/<data>-<backbone>); rerun the same "
                   "command to resume")
    p.add_argument("--epochs", type=_csv(int), metavar="N,N",
                   help="epochs per stage, comma-separated (default: "
                   f"{d['epochs']}: head, then fine-tune every block)")
    p.add_argument("--learning-rate", type=_csv(float), metavar="LR,LR",
                   help="learning rate per stage, comma-separated (default: "
                   f"{d['learning_rate']}, the second decaying to 0)")
    p.add_argument("--image-size", type=int, metavar="PIXELS",
                   help="square input size (default: the backbone's own, "
                   "224 for most)")
    p.add_argument("--interpolation", metavar="METHOD",
                   help="how images are resized to the input size, in "
                   "training, evaluate, report and predict (recorded with "
                   "the run): bilinear, nearest, bicubic, area, lanczos3, "
                   "lanczos5, gaussian or mitchellcubic (default: the "
                   "backbone's own, from its preset; bilinear for most)")
    p.add_argument("--sequence-length", type=int, metavar="TOKENS",
                   help="tokens per text, text runs (default: "
                   f"{d['sequence_length']})")
    p.add_argument("--text-column", metavar="NAME",
                   help="text runs on a CSV --data: the column of texts "
                   "(of first texts, with --text-pair-column) "
                   f"(default: {d['text_column']})")
    p.add_argument("--text-pair-column", metavar="NAME",
                   help="text runs on a CSV --data: the column of second "
                   "texts; the model then classifies sentence pairs "
                   "(premise, hypothesis) (default: none, single texts)")
    p.add_argument("--label-column", metavar="NAME",
                   help="text runs on a CSV --data: the column of labels "
                   f"(default: {d['label_column']})")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help=f"(default: {d['batch_size']})")
    p.add_argument("--validation-split", type=float, metavar="FRACTION",
                   help="fraction of each class held out for validation, "
                   "seeded; ignored when --data has a val/ folder "
                   f"(default: {d['validation_split']})")
    p.add_argument("--split-file", metavar="FILE",
                   help="a JSON split (train and val file lists, as "
                   "`transfer doctor --fix-split` writes): train and "
                   "validate on those files; --validation-split is ignored")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seed of the split, augmentation and initial "
                   f"weights (default: {d['seed']})")
    p.add_argument("--weights", metavar="pretrained|none|FILE",
                   help="the backbone's pretrained weights, none (random "
                   f"init) or a .weights.h5 file (default: {d['weights']})")
    p.add_argument("--modality", choices=("auto", "image", "text"),
                   help="what the data folder holds (default: "
                   f"{d['modality']}: guessed from its files)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   default=None, help="no flip/translate augmentation")
    p.add_argument("--skip-bad-files", action="store_true", default=None,
                   help="leave out unreadable images instead of failing")
    p.add_argument("--distribute",
                   choices=("none", "data_parallel", "model_parallel"),
                   help="train on every local device (data_parallel) or "
                   "shard kernels too (model_parallel, JAX); see docs/guide.md "
                   f"'Scaling out' (default: {d['distribute']})")
    p.add_argument("--feature-cache-dir", metavar="DIR",
                   help="keep the frozen backbone's features of head-only "
                   "stages in DIR and reuse them when the run is repeated "
                   "(see docs/guide.md 'Performance'); deleting DIR is safe")
    p.add_argument("--precision",
                   choices=("float32", "mixed_bfloat16", "mixed_float16",
                            "auto"),
                   help="Keras dtype policy of the image model (auto: mixed "
                   "bfloat16 on GPUs/TPUs that have it) "
                   f"(default: {d['precision']})")
    p.add_argument("--pooling", metavar="NAME",
                   help="how the image model pools the backbone's output: "
                   "avg or max for CNNs; token (class token), avg (patch "
                   "tokens) or map (SigLIP's head) for vision transformers; "
                   "`transfer backbones` lists each backbone's (default: "
                   "the backbone's own)")
    p.add_argument("--lora-rank", type=int, metavar="N",
                   help="LoRA adapters of rank N on the attention "
                   "projections (vision transformers, text encoders); the "
                   "backbone's own weights stay frozen (default: none)")
    p.add_argument("--drop-path", type=float, metavar="RATE",
                   help="stochastic depth rate in [0, 1), for families that "
                   f"have it (dinov2, dinov3) (default: {d['drop_path']})")
    p.add_argument("--force-resume", action="store_true",
                   help="resume an interrupted run although its data or "
                   "settings changed (the differences are recorded)")
    p.set_defaults(handler=commands.train)

    p = _subparser(sub, "evaluate", "metrics and a report on labelled data",
                   common)
    p.add_argument("run_dir")
    need = p.add_argument_group("required")
    need.add_argument("--data", required=True,
                      help="folder with the run's class subfolders, or a "
                      "root with train/ and test/ (else val/) folders; "
                      "text runs trained on a CSV take a CSV with the "
                      "same columns")
    p.add_argument("--output", help="report folder (default: "
                   "RUN_DIR/evaluation)")
    p.add_argument("--skip-bad-files", action="store_true", default=None,
                   help="leave out images that cannot be read (named on "
                   "stderr) instead of failing (default: the run's own "
                   "setting)")
    p.set_defaults(handler=commands.evaluate)

    p = _subparser(sub, "predict", "classes and probabilities per file",
                   common)
    p.add_argument("run_dir", metavar="RUN_DIR_OR_EXPORT",
                   help="a run directory, or a file `transfer export` wrote "
                   "(.onnx, .tflite, .keras, a SavedModel directory): its "
                   "class names and resizing come from the file")
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR",
                   help="images (.txt files for text runs) and folders; "
                   "text runs also take .csv files, one row per text (or "
                   "sentence pair), read from the run's text column(s)")
    p.add_argument("--top-k", type=int, default=1,
                   help="classes per file, best first (default: %(default)s)")
    p.add_argument("--format", choices=("json", "jsonl", "csv"),
                   default="json",
                   help="json: one array; jsonl: one object a line; csv: "
                   "one row per class. Rows are written as each batch "
                   "finishes (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="files read and predicted at a time "
                   "(default: %(default)s)")
    p.add_argument("--skip-bad-files", action="store_true",
                   help="skip files that cannot be read (counted and named "
                   "on stderr at the end) instead of failing")
    # Calibrated probabilities and `unknown` (transfer.calibration).
    p.add_argument("--reject-below", type=float, metavar="P",
                   help="label a file 'unknown' when its calibrated top "
                   "probability is under P (0 < P < 1), or when it is "
                   "unlike the training data (the run's out-of-"
                   "distribution threshold)")
    p.set_defaults(handler=commands.predict, before=commands.before_predict)

    p = _subparser(sub, "export", "export and check parity with Keras",
                   common)
    p.add_argument("run_dir")
    need = p.add_argument_group("required")
    need.add_argument("--format", required=True,
                      choices=("keras", "saved_model", "onnx", "litert"))
    p.add_argument("--quantize", choices=("dynamic", "float16", "int8"),
                   help="litert: dynamic (int8 weights), float16, int8 "
                   "(weights and activations, calibrated); onnx: dynamic, "
                   "int8. Judged by accuracy against the Keras model")
    p.add_argument("--data", metavar="DIR",
                   help="labelled folder (the run's classes) to judge the "
                   "export on (default with --quantize or "
                   "--max-accuracy-drop: the run's validation split)")
    p.add_argument("--calibration-data", metavar="DIR",
                   help="representative images for --quantize int8, a "
                   "folder of the run's classes (default: the run's "
                   "training split)")
    p.add_argument("--calibration-images", type=int, default=200,
                   metavar="N", help="images calibrated on, 100 to 500 "
                   "(default: %(default)s)")
    p.add_argument("--max-accuracy-drop", type=float, metavar="D",
                   help="exit 1 (and write nothing) when the artifact's "
                   "accuracy is more than D below the Keras model's, e.g. "
                   "0.01")
    p.add_argument("--output", help="target path, checked writable before "
                   "anything is converted (default: RUN_DIR/export/model."
                   "<ext>)")
    p.set_defaults(handler=commands.export, before=commands.before_export)

    p = _subparser(sub, "serve", "an HTTP service and a web page that "
                   "classify images with a run's model", common)
    p.add_argument("run_dir")
    s = SERVE_DEFAULTS
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on: 127.0.0.1 is this machine "
                   "only; 0.0.0.0 is every interface, where anyone who "
                   "can reach the machine can use the model "
                   "(default: %(default)s)")
    p.add_argument("--port", type=int, default=8000,
                   help="0 picks a free port, named on stdout "
                   "(default: %(default)s)")
    p.add_argument("--max-request-mb", type=float,
                   default=s["max_request_mb"], metavar="MB",
                   help="larger request bodies answer 413 "
                   "(default: %(default)s)")
    p.add_argument("--max-image-pixels", type=int,
                   default=s["max_image_pixels"], metavar="N",
                   help="larger images answer 413, refused from their "
                   "header before decoding (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int,
                   default=s["max_batch_size"], metavar="N",
                   help="concurrent requests predicted in one model call, "
                   "at most (default: %(default)s)")
    p.add_argument("--batch-wait-ms", type=float,
                   default=s["batch_wait_ms"], metavar="MS",
                   help="how long a batch waits for more requests "
                   "(default: %(default)s)")
    # Calibrated probabilities and `unknown` (transfer.calibration).
    p.add_argument("--reject-below", type=float, metavar="P",
                   help="answer label 'unknown' when the calibrated top "
                   "probability is under P (0 < P < 1), or for an image "
                   "unlike the training data")
    p.set_defaults(handler=commands.serve, before=commands.before_serve)

    p = _subparser(sub, "doctor", "find duplicates, leakage between "
                   "splits, likely label errors and outliers in an image "
                   "folder", common)
    doc = DOCTOR_DEFAULTS
    need = p.add_argument_group("required")
    need.add_argument("--data", required=True, metavar="DIR",
                      help="folder with one subfolder per class, or with "
                      "train/, val/ (and test/) folders of them")
    p.add_argument("--backbone", default=doc["backbone"],
                   metavar="NAME|RUN_DIR",
                   help="a backbone with pretrained weights, or a finished "
                   "run's directory (its trained features) "
                   "(default: %(default)s)")
    p.add_argument("--output", default=doc["output"], metavar="DIR",
                   help="report.html, issues.csv, summary.json, projector/ "
                   "(and split.json) go here (default: %(default)s)")
    p.add_argument("--similarity", type=float, default=doc["similarity"],
                   metavar="COSINE",
                   help="cosine similarity of embeddings at or above which "
                   "two images are near-duplicates (default: %(default)s)")
    p.add_argument("--fix-split", action="store_true",
                   help="write OUTPUT/split.json, a split with every "
                   "duplicate group in one part, for `transfer train "
                   "--split-file`")
    p.add_argument("--validation-split", type=float,
                   default=TRAIN_DEFAULTS["validation_split"],
                   metavar="FRACTION",
                   help="class-folder roots: the split `transfer train` "
                   "would make, checked for leakage (default: %(default)s)")
    p.add_argument("--seed", type=int, default=TRAIN_DEFAULTS["seed"],
                   metavar="N", help="that split's seed "
                   "(default: %(default)s)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="keep the embeddings here, keyed by file content "
                   "and backbone (default: ~/.cache/keras-transfer/doctor)")
    p.add_argument("--no-cache", action="store_true",
                   help="embed every image again, keep nothing on disk")
    p.set_defaults(handler=commands.doctor, before=commands.before_doctor)

    p = _subparser(sub, "backbones", "the registered backbones", common)
    p.add_argument("--no-params", dest="params", action="store_false",
                   help="skip building each backbone to count parameters")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="(default: %(default)s)")
    p.set_defaults(handler=commands.backbones)

    p = _subparser(sub, "weights", "prefetch and verify pretrained weights",
                   common)
    weights = p.add_subparsers(dest="action", metavar="ACTION",
                               parser_class=_Parser)
    weights.required = True
    w = weights.add_parser("fetch", help="download or prepare into the cache",
                           parents=common)
    w.add_argument("name")
    w.set_defaults(handler=commands.weights_fetch)
    w = weights.add_parser("verify", help="check cached files' sha256",
                           parents=common)
    w.add_argument("name", nargs="?")
    w.set_defaults(handler=commands.weights_verify)

    p = _subparser(sub, "report", "per-class metrics, PNGs and one HTML page",
                   common)
    p.add_argument("run_dir")
    p.add_argument("--data", help="labelled folder (default: the test/, "
                   "else val/, folder of the run's data, or the run's "
                   "validation split of it)")
    p.add_argument("--skip-bad-files", action="store_true", default=None,
                   help="leave out images that cannot be read (named on "
                   "stderr) instead of failing (default: the run's own "
                   "setting)")
    p.set_defaults(handler=commands.report)
    return parser


_BAD_INPUT = (ValueError, TypeError, FileNotFoundError, NotADirectoryError,
              IsADirectoryError)


def exit_code(error):
    """`2` for bad input, `1` for a failure while running."""
    # Looked up, not imported: when the library failed to load, the error
    # cannot be one of its own.
    download = sys.modules.get("transfer.weights.download")
    if download is not None and isinstance(
        error, download.WeightsUnavailableError
    ):
        return 1
    return 2 if isinstance(error, _BAD_INPUT) else 1


def _configure_logging(args):
    level = logging.ERROR if args.quiet else (
        logging.INFO if args.verbose else logging.WARNING
    )
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")


def main(argv=None):
    """Runs `transfer` with `argv` (default `sys.argv[1:]`); returns the code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    # The result goes here; Keras prints progress bars and "Found N files"
    # on stdout, so while the command runs stdout is stderr.
    args.stdout = sys.stdout
    try:
        if getattr(args, "no_compilation_cache", False):
            # Read by `transfer._backend.configure_compilation_cache` when
            # the library loads.
            os.environ["TRANSFER_COMPILATION_CACHE"] = "0"
        if getattr(args, "before", None):
            args.before(args)  # checks that need no Keras, seconds sooner
        _startup.load_library(loud=args.verbose or args.debug)
        with contextlib.redirect_stdout(sys.stderr):
            args.handler(args)
    except KeyboardInterrupt:
        print("transfer: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 (every error becomes one line)
        if args.debug:
            raise
        message = messages.cli_message(e, args.command)
        print(f"transfer {args.command}: error: {message}", file=sys.stderr)
        return exit_code(e)
    return 0
