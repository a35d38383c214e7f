"""Image folders of 1k, 10k and 60k files: memory and speed (issue 17).

Fashion-MNIST (Debian's `dataset-fashion-mnist`, read with
`transfer.load_dataset`) is written out once as grayscale JPEG class
folders under `--data-root`: `train-N` (the first N training images) for
each size, and `test-N` (the first min(N, 10000) test images) for the
accuracy check. A folder is complete when its marker file (written last)
exists, and is then reused. One run is trained on the smallest `train-N`
folder (at most `train-1000`) (`transfer train`, one head stage of 1 epoch, `--image-size`).
Then, for each size, each in its own subprocess, with the child's peak
RSS (`os.wait4`) and wall seconds:

- `transfer evaluate RUN --data train-N`, `transfer report RUN --data
  train-N`, `transfer predict RUN train-N --format csv` (rows to a file);
- the image preflight (`transfer.data.preflight.check_images`), cold (an
  empty `TRANSFER_CACHE_DIR`) and cached (the same call again);
- the head stage on cached features (`fit_recipe` with a
  `feature_cache_dir`, 1 epoch on the folder), cold and warm;
- `--finetune-steps` steps of a fine-tune epoch (every block trainable)
  read from the folder, and the same steps from in-memory arrays, in one
  process, alternating for `--finetune-rounds` rounds (median step times,
  median of the rounds' ratios);
- the input pipeline alone (`benchmarks/input_pipeline.py --folder`) and
  the model's own inference rate on batches in memory
  (`model.predict_on_batch`).

On the 10k test folder (or the largest one written), the streamed
evaluation (`transfer.evaluation_data.labelled_dataset`) and the in-memory one
(`transfer.evaluation_data.load_labelled_data`, then `model.predict`) must give
the same accuracy and confusion matrix. The issue's targets are checked
as booleans (`null` when a size they need was not measured). Prints the
JSON report (its last line is the report on one line); the load average
is recorded before and after.

    python benchmarks/scale.py --output benchmarks/results/scale.json
    python benchmarks/scale.py --quick      # 1k and 10k, 20 fine-tune steps
    python benchmarks/scale.py --smoke      # 200 images, 32 px, 5 steps
    python benchmarks/scale.py --sizes 60000 --commands-only  # RSS only
    python benchmarks/scale.py --sizes 10000 --finetune-only  # folder vs memory

Evaluate, report and predict are timed as whole commands (imports, model
load and preflight included): `images_per_second` is N / seconds. The
same commands on a 20-image folder (`startup-20`, two test images per
class) give their fixed cost, and `net_images_per_second` is
(N - 20) / (seconds - fixed seconds): the streaming rate that the targets
compare with the model's own rate. `--smoke` uses `small_cnn` unless
`--backbone` is given.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MARKER = ".complete"
GB = 1000**3


def _loadavg():
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def _folder_name(class_name):
    # "t-shirt/top" cannot be a folder name.
    return class_name.replace("/", "_")


def write_folder(path, images, labels, class_names):
    """Writes `images` as JPEG class folders, unless already complete."""
    if os.path.exists(os.path.join(path, MARKER)):
        return False
    from PIL import Image

    if os.path.exists(path):
        shutil.rmtree(path)  # a partial folder from an interrupted write
    for name in class_names:
        os.makedirs(os.path.join(path, _folder_name(name)))
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(os.path.join(
            path, _folder_name(class_names[label]), f"{i:05d}.jpg"),
            quality=95)
    with open(os.path.join(path, MARKER), "w") as f:
        f.write(f"{len(labels)}\n")
    return True


def write_data(data_root, sizes):
    """The `train-N` folders and one `test-N` folder; their paths."""
    import transfer

    data = transfer.load_dataset("fashion_mnist")
    folders, written = {}, []
    for size in sizes:
        if size > len(data.y_train):
            raise ValueError(f"At most {len(data.y_train)} training images. "
                             f"Received: size={size}")
        path = os.path.abspath(os.path.join(data_root, f"train-{size}"))
        if write_folder(path, data.x_train[:size], data.y_train[:size],
                        data.class_names):
            written.append(path)
        folders[size] = path
    # Two images per class: the commands' fixed cost (imports, model
    # load), subtracted to get their streaming rate.
    keep = []
    for c in range(len(data.class_names)):
        keep += [int(i) for i in (data.y_test == c).nonzero()[0][:2]]
    startup = os.path.abspath(os.path.join(data_root, "startup-20"))
    if write_folder(startup, data.x_test[keep], data.y_test[keep],
                    data.class_names):
        written.append(startup)
    folders["startup"] = startup
    test_size = min(max(sizes), len(data.y_test))
    test = os.path.abspath(os.path.join(data_root, f"test-{test_size}"))
    if write_folder(test, data.x_test[:test_size], data.y_test[:test_size],
                    data.class_names):
        written.append(test)
    return folders, test, written


def measure(command, *, stdout=None, env=None, timeout=7200):
    """Runs `command` in a subprocess: its wall seconds, peak RSS, JSON."""
    out = stdout or tempfile.NamedTemporaryFile(
        "w+", suffix=".out", delete=False).name
    with open(out, "w") as sink, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=sink, stderr=err,
                                   env=env, cwd=ROOT)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        error = err.read()
    result = {"seconds": round(seconds, 2),
              # ru_maxrss is in KiB on Linux.
              "peak_rss_bytes": usage.ru_maxrss * 1024,
              "returncode": process.returncode}
    if process.returncode:
        result["error"] = error[-2000:]
    elif stdout is None:
        with open(out) as f:
            lines = f.read().strip().splitlines()
        try:
            result["result"] = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            result["result"] = lines[-1][-500:]
    if stdout is None:
        os.unlink(out)
    return result


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args):
    return [sys.executable, "-m", "transfer", *args, "--quiet"]


def _worker(kind, args, **options):
    command = [sys.executable, os.path.abspath(__file__), "--worker", kind,
               "--image-size", str(args.image_size),
               "--batch-size", str(args.batch_size),
               "--finetune-steps", str(args.finetune_steps)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return command


# Workers: one measured thing each, in its own process; last stdout line
# is JSON.


def _load_model(run):
    from transfer import workflow

    model, config = workflow.load_run(run)
    return model, config


def work_preflight(args):
    from transfer.data import preflight

    report = preflight.check_images(args.folder, verbose=0)
    return {"files": len(report.files), "cache_hits": report.cache_hits}


def work_model_rate(args):
    import numpy as np

    model, _ = _load_model(args.run)
    size = model.input_shape[1]
    batches = [np.random.default_rng(i).uniform(
        0, 255, (args.batch_size, size, size, 3)).astype("float32")
        for i in range(4)]
    model.predict_on_batch(batches[0])  # trace once, untimed
    count, started = 0, time.perf_counter()
    steps = max(args.finetune_steps, 5)
    for step in range(steps):
        model.predict_on_batch(batches[step % len(batches)])
        count += args.batch_size
    seconds = time.perf_counter() - started
    return {"images": count, "images_per_second": round(count / seconds, 1)}


def work_head(args):
    import transfer

    model, _ = _load_model(args.run)
    train, _, _ = transfer.load_image_folder(
        args.folder, image_size=model.input_shape[1],
        batch_size=args.batch_size, validation_split=0, verbose=0)
    run_dir = tempfile.mkdtemp(prefix="scale-head-", dir=args.scratch)
    started = time.perf_counter()
    transfer.fit_recipe(
        model, transfer.Recipe((transfer.Stage("head", 1, 1e-3),)), train,
        run_dir=run_dir, verbose=0, cache_features=True,
        feature_cache_dir=args.feature_cache_dir)
    seconds = time.perf_counter() - started
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"fit_recipe_seconds": round(seconds, 2)}


class _StepTimes:
    """The wall time of every training step (`on_train_batch_end` gaps)."""

    def __init__(self):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                timer.last = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                now = time.perf_counter()
                timer.seconds.append(now - timer.last)
                timer.last = now

        self.callback = Callback()
        self.seconds, self.last = [], None


# Steps dropped at the start of every fit: the first traces (on the first
# fit) or refills the folder's shuffle buffer and prefetch queue.
WARMUP_STEPS = 2


def work_finetune(args):
    """Fine-tune steps read from the folder against the same from memory.

    One process, one model, one compiled train step. The two sources
    alternate for `--finetune-rounds` rounds of `--finetune-steps` steps
    each (folder first in even rounds, memory first in odd ones), so that
    a change in the machine's load falls on both; each source's rate is
    its median step time, and the ratio is the median of the rounds'
    ratios.
    """
    import statistics

    import keras
    import numpy as np

    import transfer

    model, _ = _load_model(args.run)
    train, _, _ = transfer.load_image_folder(
        args.folder, image_size=model.input_shape[1],
        batch_size=args.batch_size, validation_split=0, verbose=0)
    transfer.set_trainable_blocks(model, "all")
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=_logits(model)))
    steps = args.finetune_steps + WARMUP_STEPS
    # The same files, decoded once into arrays before timing.
    x, y = [], []
    for images, labels in train.take(steps):
        x.append(np.asarray(images))
        y.append(np.asarray(labels))
    sources = {"folder": {"x": train.repeat()},
               "memory": {"x": np.concatenate(x), "y": np.concatenate(y),
                          "batch_size": args.batch_size, "shuffle": True}}
    steps = min(steps, len(y))
    # One untimed fit per source: tracing, and the memory path's adapter.
    for data in sources.values():
        model.fit(**data, epochs=1, steps_per_epoch=WARMUP_STEPS, verbose=0)
    step_seconds = {name: [] for name in sources}
    round_ratios = []
    for round_index in range(args.finetune_rounds):
        order = ("folder", "memory") if round_index % 2 == 0 else (
            "memory", "folder")
        medians = {}
        for name in order:
            timer = _StepTimes()
            model.fit(**sources[name], epochs=1, steps_per_epoch=steps,
                      verbose=0, callbacks=[timer.callback])
            timed = timer.seconds[WARMUP_STEPS:]
            step_seconds[name] += timed
            medians[name] = statistics.median(timed)
        round_ratios.append(round(medians["memory"] / medians["folder"], 3))

    def rate(name):
        return round(args.batch_size / statistics.median(step_seconds[name]),
                     1)

    return {"rounds": args.finetune_rounds,
            "timed_steps_per_round": steps - WARMUP_STEPS,
            "folder_images_per_second": rate("folder"),
            "memory_images_per_second": rate("memory"),
            "round_ratios": round_ratios,
            "folder_to_memory": round(statistics.median(round_ratios), 3)}


def _logits(model):
    # Logits when the output layer has no activation, as fit_recipe tells.
    activation = getattr(model.layers[-1], "activation", None)
    return activation is None or getattr(
        activation, "__name__", "") == "linear"


def work_equality(args):
    import numpy as np

    from transfer import evaluation_data
    from transfer import workflow
    from transfer.reporting import report

    model, config = _load_model(args.run)
    streamed = report.evaluate_data(
        model, evaluation_data.labelled_dataset(args.folder, model, config,
                                                batch_size=args.batch_size)
    ).result()
    x, y = evaluation_data.load_labelled_data(args.folder, model, config)
    predicted = np.asarray(
        model.predict(x, batch_size=args.batch_size, verbose=0)).argmax(-1)
    num_classes = len(workflow.run_class_names(model))
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (np.asarray(y), predicted), 1)
    accuracy = float(np.mean(predicted == np.asarray(y)))
    return {
        "images": int(len(y)),
        "streamed_accuracy": streamed["accuracy"],
        "in_memory_accuracy": accuracy,
        "accuracy_equal": streamed["accuracy"] == accuracy,
        "confusion_matrix_equal":
            streamed["confusion_matrix"] == matrix.tolist(),
    }


WORKERS = {"preflight": work_preflight, "model_rate": work_model_rate,
           "head": work_head, "finetune": work_finetune,
           "equality": work_equality}


def choose_backbone(requested):
    """The backbone, weights flag and a note on what was used."""
    from transfer.weights import efficientnet_lite

    found = efficientnet_lite.find_source_file("efficientnet_lite0")
    if requested == "auto":
        requested = "efficientnet_lite0" if found else "small_cnn"
        note = ("efficientnet_lite0 with its offline weights" if found else
                "efficientnet_lite0 weights not found "
                "(find_source_file() is None): small_cnn, random init")
    else:
        note = f"{requested} as requested"
    if requested == "efficientnet_lite0" and not found:
        note = ("efficientnet_lite0 weights not found "
                "(find_source_file() is None): random init")
        return requested, "none", note
    weights = "pretrained" if requested == "efficientnet_lite0" else "none"
    return requested, weights, note


def train_run(args, folder, backbone, weights):
    config = os.path.join(args.scratch, "scale_recipe.json")
    with open(config, "w") as f:
        json.dump({"image_size": args.image_size,
                   "batch_size": args.batch_size,
                   "stages": [{"name": "head", "epochs": 1,
                               "learning_rate": 1e-3}]}, f)
    run = os.path.join(args.scratch, f"run-{time.strftime('%H%M%S')}")
    result = measure(_cli("train", "--data", folder, "--backbone", backbone,
                          "--weights", weights, "--config", config,
                          "--output", run, "--no-augment"), env=_env())
    return run, result


def _rate(images, result):
    if result.get("returncode") or not result.get("seconds"):
        return None
    return round(images / result["seconds"], 1)


def measure_commands(args, run, size, folder):
    """`transfer evaluate`, `report` and `predict` on `folder`.

    A preflight in the user's cache first, so that every command finds
    the folder's preflight cached, as in a second session on it.
    """
    row = {"preflight_user_cache": measure(
        _worker("preflight", args, folder=folder), env=_env())}
    row["evaluate"] = measure(_cli(
        "evaluate", run, "--data", folder,
        "--output", os.path.join(args.scratch, f"evaluate-{size}")),
        env=_env())
    row["evaluate"].pop("result", None)
    row["report"] = measure(_cli("report", run, "--data", folder),
                            env=_env())
    row["report"].pop("result", None)
    csv_path = os.path.join(args.scratch, f"predict-{size}.csv")
    row["predict"] = measure(_cli("predict", run, folder, "--format", "csv"),
                             stdout=csv_path, env=_env())
    with open(csv_path) as f:
        row["predict"]["rows"] = sum(1 for _ in f) - 1
    for name in ("evaluate", "report", "predict"):
        row[name]["images_per_second"] = _rate(size, row[name])
    return row


def measure_finetune(args, run, size, folder):
    row = {"size": size, "folder": folder, "finetune": measure(
        _worker("finetune", args, run=run, folder=folder,
                finetune_rounds=args.finetune_rounds), env=_env())}
    row["ratios"] = {"finetune_folder_to_memory": _nested(
        row["finetune"], "folder_to_memory")}
    return row


def measure_size(args, run, size, folder, model_rate, startup):
    if args.finetune_only:
        return measure_finetune(args, run, size, folder)
    row = {"size": size, "folder": folder}
    row.update(measure_commands(args, run, size, folder))
    for name in ("evaluate", "report", "predict"):
        # The rate past the fixed cost of a command on 20 images.
        fixed = startup[name]
        extra = row[name]["seconds"] - fixed["seconds"]
        row[name]["net_images_per_second"] = (
            round((size - 20) / extra, 1)
            if extra > 0 and size > 20 and not fixed["returncode"]
            and not row[name]["returncode"] else None)
    row["peak_rss_bytes"] = {name: row[name]["peak_rss_bytes"]
                             for name in ("evaluate", "report", "predict")}
    if args.commands_only:
        return row
    cache = tempfile.mkdtemp(prefix="preflight-", dir=args.scratch)
    for state in ("cold", "cached"):
        row[f"preflight_{state}"] = measure(
            _worker("preflight", args, folder=folder),
            env=_env(TRANSFER_CACHE_DIR=cache))
    features = tempfile.mkdtemp(prefix="features-", dir=args.scratch)
    for state in ("cold", "warm"):
        row[f"head_stage_{state}"] = measure(
            _worker("head", args, run=run, folder=folder,
                    feature_cache_dir=features, scratch=args.scratch),
            env=_env())
    row["finetune"] = measure_finetune(args, run, size, folder)["finetune"]
    row["input_pipeline"] = measure(
        [sys.executable, os.path.join(HERE, "input_pipeline.py"),
         "--folder", folder, "--image-size", str(args.image_size),
         "--batch-size", str(args.batch_size), "--epochs", "2"], env=_env())
    rates = {
        "evaluate": row["evaluate"]["net_images_per_second"],
        "predict": row["predict"]["net_images_per_second"],
        "evaluate_whole_command": row["evaluate"]["images_per_second"],
        "predict_whole_command": row["predict"]["images_per_second"],
        "input_pipeline": _nested(row["input_pipeline"],
                                  "best_images_per_second"),
        "model": model_rate,
        "finetune_folder": _nested(row["finetune"],
                                   "folder_images_per_second"),
        "finetune_memory": _nested(row["finetune"],
                                   "memory_images_per_second"),
    }
    row["rates"] = rates
    row["ratios"] = {
        "evaluate_to_model": _ratio(rates["evaluate"], model_rate),
        "predict_to_model": _ratio(rates["predict"], model_rate),
        "input_pipeline_to_model": _ratio(rates["input_pipeline"],
                                          model_rate),
        # The median of the interleaved rounds' ratios.
        "finetune_folder_to_memory": _nested(row["finetune"],
                                             "folder_to_memory"),
    }
    return row


def _nested(result, key):
    value = result.get("result")
    return value.get(key) if isinstance(value, dict) else None


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def targets(rows):
    """The issue's targets as booleans; `None` where not measured."""
    by_size = {row["size"]: row for row in rows
               if "peak_rss_bytes" in row}
    names = ("evaluate", "report", "predict")
    ten, sixty = by_size.get(10000), by_size.get(60000)
    out = {}
    out["peak_rss_10k_at_most_3gb"] = (
        all(ten["peak_rss_bytes"][n] <= 3 * GB for n in names)
        if ten else None)
    out["peak_rss_60k_within_1.2x_of_10k"] = (
        all(sixty["peak_rss_bytes"][n] <= 1.2 * ten["peak_rss_bytes"][n]
            for n in names) if ten and sixty else None)

    def each(key, floor):
        values = [row["ratios"].get(key) for row in rows if "ratios" in row]
        if not values or any(v is None for v in values):
            return None
        return all(v >= floor for v in values)

    out["evaluate_at_least_0.8x_model_rate"] = each("evaluate_to_model", 0.8)
    out["predict_at_least_0.8x_model_rate"] = each("predict_to_model", 0.8)
    out["finetune_folder_at_least_0.9x_memory"] = each(
        "finetune_folder_to_memory", 0.9)
    return out


def run_benchmark(args):
    from transfer.weights import efficientnet_lite  # noqa: F401

    report = {"loadavg_before": _loadavg(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "sizes": args.sizes, "image_size": args.image_size,
              "batch_size": args.batch_size,
              "finetune_steps": args.finetune_steps,
              "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
              "cpu_count": os.cpu_count()}
    backbone, weights, note = choose_backbone(args.backbone)
    report.update(backbone=backbone, weights=weights, backbone_note=note)
    os.makedirs(args.data_root, exist_ok=True)
    args.scratch = tempfile.mkdtemp(
        prefix=f"scale-{time.strftime('%H%M%S')}-",
        dir=os.path.abspath(args.data_root))
    started = time.perf_counter()
    # The run is trained on at most 1,000 images: `--sizes 60000` alone
    # must not spend an hour training before it measures anything.
    train_size = min(min(args.sizes), 1000)
    folders, test, written = write_data(
        args.data_root, sorted(set(args.sizes) | {train_size}))
    report["data_written"] = {"folders": written, "seconds": round(
        time.perf_counter() - started, 1)}
    run, trained = train_run(args, folders[train_size], backbone,
                             weights)
    trained.pop("result", None)
    report["train"] = dict(trained, run=run, folder=folders[train_size])
    if trained["returncode"]:
        report["loadavg_after"] = _loadavg()
        return report
    model_rate = startup = None
    if not args.finetune_only:
        model = measure(_worker("model_rate", args, run=run), env=_env())
        report["model_rate"] = model
        model_rate = _nested(model, "images_per_second")
        startup = measure_commands(args, run, 20, folders["startup"])
        report["startup_20_images"] = startup
    report["rows"] = []
    for size in args.sizes:
        report["rows"].append(measure_size(args, run, size, folders[size],
                                           model_rate, startup))
        print(json.dumps({"size": size,
                          "rates": report["rows"][-1].get("rates"),
                          "ratios": report["rows"][-1].get("ratios"),
                          "peak_rss_bytes":
                              report["rows"][-1].get("peak_rss_bytes")}),
              file=sys.stderr, flush=True)
    report["targets"] = targets(report["rows"])
    if args.commands_only or args.finetune_only:
        return _finish(args, report, started)
    report["equality"] = measure(
        _worker("equality", args, run=run, folder=test), env=_env())
    equal = _nested(report["equality"], "accuracy_equal"), _nested(
        report["equality"], "confusion_matrix_equal")
    report["targets"]["streamed_equals_in_memory"] = (
        all(equal) if None not in equal else None)
    return _finish(args, report, started)


def _finish(args, report, started):
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["loadavg_after"] = _loadavg()
    if not args.keep_scratch:
        shutil.rmtree(args.scratch, ignore_errors=True)
        report["scratch_removed"] = True
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,60000",
                        help="images per folder, comma-separated")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--finetune-steps", type=int, default=50)
    parser.add_argument("--backbone", default="auto",
                        help="auto: efficientnet_lite0 when its offline "
                        "weights are installed, else small_cnn")
    parser.add_argument("--data-root", default="runs/scale_data")
    parser.add_argument("--quick", action="store_true",
                        help="sizes 1000,10000; 20 fine-tune steps")
    parser.add_argument("--smoke", action="store_true",
                        help="200 images, 32 px, 5 steps: checks it runs")
    parser.add_argument("--keep-scratch", action="store_true",
                        help="keep the run, reports and caches made")
    parser.add_argument("--commands-only", action="store_true",
                        help="per size, only evaluate, report and predict "
                        "(peak RSS and seconds): no preflight, head stage, "
                        "fine-tune, input pipeline or equality check")
    parser.add_argument("--finetune-rounds", type=int, default=5,
                        help="rounds of folder and in-memory fine-tune "
                        "steps, interleaved")
    parser.add_argument("--finetune-only", action="store_true",
                        help="per size, only the fine-tune comparison "
                        "(folder against memory)")
    parser.add_argument("--output")
    parser.add_argument("--worker", choices=sorted(WORKERS),
                        help=argparse.SUPPRESS)
    for hidden in ("--run", "--folder", "--feature-cache-dir", "--scratch"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        print(json.dumps(WORKERS[args.worker](args)), flush=True)
        return
    if args.quick:
        args.sizes, args.finetune_steps = "1000,10000", 20
    if args.smoke:
        args.sizes, args.image_size, args.finetune_steps = "200", 32, 5
        if args.backbone == "auto":
            args.backbone = "small_cnn"
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    report = run_benchmark(args)
    text = json.dumps(report, indent=1)
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")
    print(text)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
