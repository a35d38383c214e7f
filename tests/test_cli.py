"""The `transfer` command line, driven in subprocesses on tiny data.

One module-scoped run trains a tiny CNN (saved as a `.keras` backbone file,
so the subprocess needs no test registry) on 16 synthetic PNGs, under umask
022; predict and export run on it in subprocesses, on every backend.
Cheaper checks (usage errors, reports, tables) call `transfer.cli.main` in
this process. `--help` and `--version` run in subprocesses that must not
import TensorFlow, Keras, JAX or torch.

Covers: transfer.cli, transfer.workflow, transfer.prediction,
transfer.evaluation_data, transfer.run_config, transfer.run_report,
transfer.export.
"""

import csv
import datetime
import io
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import transfer
from transfer import _backend
from transfer import export as deploy
from transfer import run_config
from transfer.cli import backbone_table as table
from transfer.cli import main

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent

BACKEND = keras.config.backend()
# Keras has no distribution API on torch; elsewhere the CLI's run goes
# through the data-parallel engine (one CPU device here).
DISTRIBUTE = "none" if BACKEND == "torch" else "data_parallel"
RECIPE_YAML = """\
image_size: 32
batch_size: 8
stages:
  - {name: head, epochs: 1, learning_rate: 1.0e-2}
  - {name: top, epochs: 1, learning_rate: 5.0e-3, trainable_blocks: 1}
"""


def run_cli(*args, cwd, quiet_tf=True):
    """Runs `python -m transfer ARGS` in `cwd` under umask 022.

    `quiet_tf=False` leaves `TF_CPP_MIN_LOG_LEVEL` to the command, as a
    user's shell does (conftest.py sets it for this process).
    """
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    if not quiet_tf:
        del env["TF_CPP_MIN_LOG_LEVEL"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(transfer.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "transfer", *args], cwd=cwd,
        env=env, capture_output=True, text=True, timeout=600, umask=0o022,
    )


# JAX pays its import and XLA compile again in every process (predict alone
# took 75 s under a load of 8 here): on JAX only `train` runs in a
# subprocess, and predict/export call `main` in this process.
IN_PROCESS = BACKEND == "jax"


def cli(*args, cwd, capsys):
    """Runs `transfer ARGS` in `cwd`: a subprocess, or `main` on JAX."""
    if not IN_PROCESS:
        return run_cli(*args, cwd=cwd)
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(list(args))
    finally:
        os.chdir(previous)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def last_json(stdout):
    """The JSON result: the last line of a command's stdout."""
    return json.loads(stdout.strip().splitlines()[-1])


def worst_rows(page):
    """`(file, true, predicted, p)` of a report's worst-examples table."""
    cell = r"<td class='text'>([^<]*)</td>"
    return [
        (path, true, predicted, float(p))
        for path, true, predicted, p in re.findall(
            rf"<tr><td>\d+</td>{cell}{cell}{cell}<td>([0-9.]+)</td>", page
        )
    ]


def check_worst_files(page, data_dir, run_dir, count):
    """The report names each worst example's file, and it is that file."""
    from transfer import prediction
    from transfer import workflow

    assert "<strong>p</strong> is the probability the model gives its " \
        "predicted class" in page
    rows = worst_rows(page)
    assert len(rows) == count
    for path, true, _, _ in rows:
        assert (data_dir / path).is_file(), path
        assert path.split(os.sep)[0] == true  # its class folder
    model, _ = workflow.load_run(str(run_dir))
    predictions = prediction.predict_files(
        model, [str(data_dir / row[0]) for row in rows]
    )
    for row, result in zip(rows, predictions, strict=True):
        best = result["predictions"][0]
        assert (best["class"], best["probability"]) == (
            row[2], pytest.approx(row[3], abs=1e-3)
        ), row


def check_header(page, data_dir, split):
    """The report says what data, model, version and date it covers."""
    header = page.split("<table class='header'>")[1].split("</table>")[0]
    fields = dict(re.findall(
        r"<tr><th>([^<]+)</th><td class='text'>([^<]*)</td></tr>", header
    ))
    assert fields["data"] == str(data_dir)
    assert fields["split"].startswith(split + " (")
    assert fields["backbone"].startswith("tiny_cnn")
    # The backbone file's weights.
    assert fields["weights"].startswith(f"file ({data_dir.parent / 'tiny_cnn.keras'}")
    assert fields["transfer"].startswith(transfer.__version__ + " (Keras ")
    assert fields["date"].startswith(datetime.date.today().isoformat())


def _write_folder(root, num_images=16):
    x, y = transfer.synthetic_images(num_images, 32, 2)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = os.path.join(root, ("cat", "dog")[label])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype("uint8")).save(
            os.path.join(folder, f"{i}.png")
        )


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A finished `transfer train` run made in a subprocess."""
    root = tmp_path_factory.mktemp("cli")
    _write_folder(str(root / "data"))
    backbone, *_ = transfer.build_backbone("tiny_cnn", weights=None)
    backbone.save(str(root / "tiny_cnn.keras"))
    (root / "recipe.yaml").write_text(RECIPE_YAML)
    result = run_cli(
        "train", "--data", "data", "--backbone", "tiny_cnn.keras",
        "--config", "recipe.yaml", "--output", "run", "--epochs", "1,1",
        "--distribute", DISTRIBUTE, "--feature-cache-dir", "features",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Recorded now: later tests write into the run from this process, whose
    # umask is not ours to set.
    result.modes = {
        os.path.relpath(os.path.join(folder, name), root / "run"):
            os.stat(os.path.join(folder, name)).st_mode & 0o777
        for folder, _, names in os.walk(root / "run") for name in names
    }
    return root, result


def test_train_writes_run_and_resolved_config(cli_run):
    root, result = cli_run
    # stdout holds the result alone; progress and "Found N files" go to
    # stderr.
    summary = json.loads(result.stdout)
    assert summary["class_names"] == ["cat", "dog"]
    assert summary["backend"] == BACKEND
    assert set(summary["final_metrics"]) >= {"loss", "val_loss"}
    # Keras progress bars ran during fit.
    assert "step" in result.stderr
    config = json.loads((root / "run" / "config.json").read_text())
    assert config["image_size"] == 32 and config["batch_size"] == 8
    assert config["augment"] is True  # flip + translate on the training path
    assert config["data"] == str(root / "data")
    assert [s["name"] for s in config["stages"]] == ["head", "top"]
    assert config["stages"][1]["trainable_blocks"] == 1
    assert (root / "run" / "model.keras").exists()
    assert config["distribute"] == DISTRIBUTE
    assert config["feature_cache_dir"] == str(root / "features")
    manifest = json.loads((root / "run" / "manifest.json").read_text())
    if DISTRIBUTE != "none":
        assert manifest["distribution"]["mode"] == DISTRIBUTE
        assert manifest["distribution"]["global_batch"] == 8


def test_predict_json_and_csv(cli_run, capsys):
    root, _ = cli_run
    result = cli("predict", "run", "data/cat", "data/dog/1.png",
                 "--top-k", "2", "--format", "csv", cwd=root, capsys=capsys)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    files = sorted({r["file"] for r in rows})
    assert len(files) == len(os.listdir(root / "data" / "cat")) + 1
    assert len(rows) == 2 * len(files)
    for file in files:
        probs = [float(r["probability"]) for r in rows if r["file"] == file]
        classes = {r["class"] for r in rows if r["file"] == file}
        assert classes == {"cat", "dog"}
        assert probs[0] >= probs[1]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    # The CLI's probabilities are the reloaded model's softmax, with the
    # temperature fitted on the validation split (transfer.calibration).
    model = transfer.load_model(str(root / "run" / "model.keras"))
    image = keras.utils.img_to_array(
        keras.utils.load_img(str(root / "data/dog/1.png"), target_size=(32, 32))
    )
    temperature = model.transfer_metadata["calibration"]["temperature"]
    logits = np.asarray(model.predict(image[None], verbose=0))[0] / temperature
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    mine = {r["class"]: float(r["probability"]) for r in rows
            if r["file"] == "data/dog/1.png"}
    assert mine["dog"] == pytest.approx(expected[1], abs=1e-5)


def test_run_files_honour_umask(cli_run):
    # Under umask 022 every file of a run is 0644, as open() would make it:
    # checkpoints, weights, model.keras (once 0600, from mkstemp), event
    # files, report PNGs, JSON.
    _, result = cli_run
    assert {"model.keras", "config.json", "manifest.json",
            "checkpoints/best.weights.h5"} <= set(result.modes)
    assert any(name.endswith(".npz") for name in result.modes)
    assert any("events.out.tfevents" in name for name in result.modes)
    assert any(name.endswith(".png") for name in result.modes)
    odd = {name: oct(mode) for name, mode in result.modes.items()
           if mode != 0o644}
    assert not odd


def test_predict_stderr_quiet_and_skipped_files_named(cli_run, capsys):
    # A successful command prints no native log lines (TensorFlow's cuInit
    # probe, absl), stdout holds the JSON alone, and files a folder holds
    # that are not images are counted and named on stderr.
    root, _ = cli_run
    photos = root / "photos"
    photos.mkdir()
    for name in ("0.png", "1.png"):
        for label in ("cat", "dog"):
            source = root / "data" / label / name
            if source.exists():
                (photos / name).write_bytes(source.read_bytes())
    (photos / "notes.txt").write_text("not an image")
    if IN_PROCESS:
        result = cli("predict", "run", "photos", cwd=root, capsys=capsys)
    else:
        result = run_cli("predict", "run", "photos", cwd=root, quiet_tf=False)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads(result.stdout)
    assert sorted(p["file"] for p in predictions) == [
        os.path.join("photos", "0.png"), os.path.join("photos", "1.png")]
    assert "Skipped 1 file(s)" in result.stderr
    assert os.path.join("photos", "notes.txt") in result.stderr
    for noise in ("E0000", "cuInit", "absl", "Found"):
        assert noise not in result.stderr, result.stderr


def _formats_here():
    return [f for f, able in _backend.EXPORT_BACKENDS.items()
            if BACKEND in able and f != "keras"]


# One export per backend runs in a subprocess (ONNX on TensorFlow and
# torch); the other formats call `main` here, which saves a process start.
SUBPROCESS_EXPORT = {"tensorflow": "onnx", "torch": "onnx"}


@pytest.mark.all_backends
@pytest.mark.parametrize("export_format", ["saved_model", "onnx", "litert"])
def test_export_parity(cli_run, export_format, capsys):
    root, _ = cli_run
    if export_format not in _formats_here():
        pytest.skip(f"{export_format} is not exported on {BACKEND}")
    if SUBPROCESS_EXPORT.get(BACKEND) == export_format:
        result = run_cli("export", "run", "--format", export_format, cwd=root)
        assert result.returncode == 0, result.stderr[-3000:]
        stdout, stderr = result.stdout, result.stderr
        path = root / json.loads(stdout)["path"]
        assert os.stat(path).st_mode & 0o777 == 0o644  # under umask 022
    else:
        code = main(["export", str(root / "run"), "--format", export_format])
        stdout, stderr = capsys.readouterr()
        assert code == 0, stderr[-3000:]
        path = last_json(stdout)["path"]
    report = last_json(stdout)
    assert os.path.exists(path)
    if export_format == "saved_model":
        assert os.path.exists(os.path.join(path, "saved_model.pb"))
    assert report["max_abs_diff"] <= 1e-4
    assert report["backend"] == BACKEND
    assert "max abs diff" in stderr
    # The artifact alone names the run's classes.
    assert deploy.read_metadata(path)["class_names"] == ["cat", "dog"]


@pytest.mark.all_backends
def test_export_refused_on_other_backend(cli_run, capsys):
    root, _ = cli_run
    refused = [f for f, able in _backend.EXPORT_BACKENDS.items()
               if BACKEND not in able]
    if not refused:
        pytest.skip(f"{BACKEND} exports every format")
    code = main(["export", str(root / "run"), "--format", refused[0]])
    err = capsys.readouterr().err
    assert code == 2
    able = _backend.EXPORT_BACKENDS[refused[0]]
    assert f"KERAS_BACKEND={able[0]}" in err and BACKEND in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, needle", [
    (["--format", "saved_model", "--quantize", "int8"], "does not take"),
    (["--format", "onnx", "--quantize", "float16"], "does not take"),
    # The run's training split holds 12 of the 16 images.
    (["--format", "onnx", "--quantize", "int8", "--calibration-images",
      "100"], "holds 12"),
    (["--format", "onnx", "--quantize", "int8", "--calibration-data",
      "birds"], "class"),
    (["--format", "onnx", "--quantize", "int8", "--calibration-images",
      "20"], "100 to 500"),
])
def test_export_quantization_bad_input_exits_2(cli_run, argv, needle, capsys):
    root, _ = cli_run
    if not (root / "birds").exists():
        _write_folder(str(root / "birds"))
        os.rename(root / "birds" / "cat", root / "birds" / "owl")
    target = root / "refused.onnx"
    code = main(["export", str(root / "run"), "--output", str(target),
                 *[str(root / a) if a == "birds" else a for a in argv]])
    err = capsys.readouterr().err
    assert code == 2, err
    # One error line, last (Keras's "Found N files" may come before it).
    assert needle in err.strip().splitlines()[-1], err
    assert not target.exists()


def test_export_int8_judged_on_data(cli_run, capsys):
    # Calibrated on a folder of the run's classes, judged on --data.
    root, _ = cli_run
    export_format = "onnx" if "onnx" in _formats_here() else None
    if export_format is None:
        pytest.skip(f"no int8 export on {BACKEND}")
    if not (root / "calibration").exists():
        _write_folder(str(root / "calibration"), num_images=100)
    target = root / "int8.onnx"
    code = main(["export", str(root / "run"), "--format", export_format,
                 "--quantize", "int8", "--calibration-data",
                 str(root / "calibration"), "--calibration-images", "100",
                 "--data", str(root / "data"), "--max-accuracy-drop", "1",
                 "--output", str(target)])
    out, err = capsys.readouterr()
    assert code == 0, err
    judged = last_json(out)["evaluation"]
    assert judged["num_images"] == 16
    assert judged["file_size_bytes"] == target.stat().st_size
    assert "Calibrating on 100 images" in err and "top-1 agreement" in err
    assert deploy.read_metadata(str(target))["quantize"] == "int8"


def test_export_over_max_accuracy_drop_exits_1(cli_run, capsys, monkeypatch):
    # The artifact is judged before it is put in place: over the limit,
    # the command prints the measurements, exits 1 and writes nothing.
    from transfer.export import quantization

    root, _ = cli_run
    target = root / "judged.keras"

    def judged(model, path, export_format, evaluation, **kwargs):
        return {"num_images": len(evaluation.x), "keras_accuracy": 0.9,
                "artifact_accuracy": 0.85, "accuracy_drop": 0.05,
                "top1_agreement": 0.9, "file_size_bytes": 1,
                "latency_ms_batch1": 1.0}

    monkeypatch.setattr(quantization, "evaluate_artifact", judged)
    code = main(["export", str(root / "run"), "--format", "keras",
                 "--output", str(target), "--max-accuracy-drop", "0.01"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "0.0500 accuracy" in err and "nothing was written" in err
    assert last_json(out)["accuracy_drop"] == 0.05
    assert not target.exists()
    assert not [n for n in os.listdir(root) if n.startswith(".tmp-")]


def test_keras_export_and_report(cli_run, capsys):
    root, _ = cli_run
    run_dir = str(root / "run")
    assert main(["export", run_dir, "--format", "keras", "--quiet"]) == 0
    assert last_json(capsys.readouterr().out)["max_abs_diff"] == 0.0
    assert main(["report", run_dir, "--quiet"]) == 0
    out = last_json(capsys.readouterr().out)
    assert out["split"] == "validation"
    report_dir = root / "run" / "report"
    for name in ("confusion_matrix.png", "training_curves.png",
                 "worst_examples.png", "metrics.json",
                 "reliability_diagram.png"):
        assert (report_dir / name).stat().st_size > 0, name
    page = (report_dir / "report.html").read_text()
    # Curves, confusion matrix, reliability diagram, worst examples.
    assert page.count("data:image/png;base64,") == 4
    assert "Calibration: reliability diagram" in page
    assert "<td>cat</td>" in page and "precision" in page
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"cat", "dog"}
    # The run's validation split, rebuilt: its files, named.
    check_header(page, root / "data", "validation")
    check_worst_files(page, root / "data", root / "run",
                      min(8, metrics["num_examples"]))


def test_evaluate_on_folder(cli_run, capsys):
    root, _ = cli_run
    assert main(["evaluate", str(root / "run"), "--data", str(root / "data"),
                 "--quiet"]) == 0
    metrics = last_json(capsys.readouterr().out)
    assert metrics["num_examples"] == 16
    assert sum(map(sum, metrics["confusion_matrix"])) == 16
    page = (root / "run" / "evaluation" / "report.html").read_text()
    check_header(page, root / "data", "evaluation")
    check_worst_files(page, root / "data", root / "run", 8)


def test_evaluate_refuses_other_classes(cli_run, tmp_path, capsys):
    root, _ = cli_run
    other = tmp_path / "other"
    _write_folder(str(other))
    os.rename(other / "dog", other / "bird")
    code = main(["evaluate", str(root / "run"), "--data", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "bird" in err and "differ" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--data", "nowhere", "--backbone", "tiny_cnn"],
         "does not exist"),
        (["train", "--data", "d", "--backbone", "resnet5", "--modality",
          "image"], "Unknown backbone"),
        (["train", "--backbone", "efficientnet_b0"], "No `data` given"),
        (["train", "--data", "d", "--backbone", "x", "--epochs", "a,b"],
         "comma-separated"),
        (["predict", "no_run", "x.png"], "No trained model"),
        (["export", "no_run", "--format", "tflite"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / "a").mkdir(parents=True)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_config_key_names_allowed(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("backbone: tiny_cnn\nlearning_rate: 0.1\n")
    code = main(["train", "--data", str(tmp_path), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert "learning_rate" in err and "Allowed" in err and "batch_size" in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_traceback(where):
    argv = ["predict", "no_run", "x.png"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(FileNotFoundError):
        main(argv)


def test_epochs_must_match_stages(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path), "--backbone", "tiny_cnn",
                 "--epochs", "1,2,3"])
    assert code == 2
    assert "2 stage(s)" in capsys.readouterr().err


def test_help_has_examples(capsys):
    for argv in (["--help"], ["train", "--help"], ["export", "--help"],
                 ["weights", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        assert "examples:" in capsys.readouterr().out


FRAMEWORKS = ("tensorflow", "keras", "keras_hub", "jax", "torch")
# Runs `transfer ARGS` as the console script does (argv[0] "transfer") and
# writes the exit code and every imported module to $PROBE_OUT. (`-X
# importtime` would not do: the old start-up muted stderr while importing.)
PROBE = """
import json, os, runpy, sys

sys.argv = ["transfer", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("transfer", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
with open(os.environ["PROBE_OUT"], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"],
                                  ["export", "--help"], ["--version"]])
def test_help_and_version_import_no_framework(argv, tmp_path):
    env = dict(os.environ, PROBE_OUT=str(tmp_path / "probe.json"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(transfer.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=600,
    )
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["code"] in (0, None), result.stderr[-3000:]
    imported = {name.split(".")[0] for name in probe["modules"]}
    assert "transfer" in imported
    assert not imported & set(FRAMEWORKS), imported & set(FRAMEWORKS)
    if argv == ["--version"]:
        assert result.stdout.startswith(f"transfer {transfer.__version__} ")
    if argv == ["train", "--help"]:
        assert "required" in result.stdout
        for default in ("3,15", "32", "0.2", "1337", "pretrained"):
            assert f"(default: {default}" in result.stdout, default


def test_help_defaults_match_the_library():
    from transfer import cli

    defaults = cli.TRAIN_DEFAULTS
    for key in ("batch_size", "validation_split", "seed", "sequence_length",
                "weights", "modality", "distribute", "precision"):
        assert defaults[key] == run_config.DEFAULTS[key], key
    stages = transfer.two_stage_recipe().get_config()["stages"]
    assert defaults["epochs"] == ",".join(str(s["epochs"]) for s in stages)
    assert defaults["learning_rate"] == ",".join(
        str(s["learning_rate"]) for s in stages)


def test_unwritable_export_path_exits_2_before_loading(cli_run, tmp_path,
                                                       capsys, monkeypatch):
    from transfer import workflow

    root, _ = cli_run

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model was loaded or converted")

    monkeypatch.setattr(workflow, "load_run", must_not_run)
    monkeypatch.setattr(deploy, "export_model", must_not_run)
    (tmp_path / "a_file").write_text("")
    targets = [str(tmp_path / "a_file" / "model.onnx")]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):  # root writes anywhere
        targets.append(str(locked / "new" / "model.onnx"))
    try:
        for target in targets:
            code = main(["export", str(root / "run"), "--format", "keras",
                         "--output", target])
            err = capsys.readouterr().err
            assert code == 2, err
            assert target in err and "--output PATH" in err
            assert len(err.strip().splitlines()) == 1
    finally:
        locked.chmod(0o700)
    assert not (locked / "new").exists()


def test_failed_train_leaves_no_empty_folder(tmp_path, capsys):
    data = tmp_path / "data"
    _write_folder(str(data))
    (data / "cat" / "broken.png").write_bytes(b"not a png")
    existing = tmp_path / "existing"
    existing.mkdir()
    for output in (tmp_path / "runs" / "first", existing):
        code = main(["train", "--data", str(data), "--backbone", "tiny_cnn",
                     "--weights", "none", "--output", str(output)])
        err = capsys.readouterr().err
        assert code == 2, err
        # The library's `skip_bad_files=True`, in the command line's words.
        assert "--skip-bad-files" in err and "skip_bad_files" not in err
    assert not (tmp_path / "runs").exists()  # made by the run, removed
    assert existing.is_dir()  # there before: kept


def test_errors_use_command_line_words(cli_run, tmp_path, capsys,
                                       monkeypatch):
    root, _ = cli_run
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / "a").mkdir(parents=True)
    assert main(["train", "--data", "d", "--backbone", "resnet5",
                 "--modality", "image"]) == 2
    err = capsys.readouterr().err
    assert "`transfer backbones`" in err and "list_backbones" not in err
    from transfer.cli import messages

    error = ValueError(
        "run transfer.fetch_weights('efficientnet_b0'). Or pass weights=None "
        "(UnidentifiedImageError: cannot identify image file "
        "<_io.BytesIO object at 0x7f3a2c1e9f30>)")
    message = messages.cli_message(error, "train")
    assert "`transfer weights fetch efficientnet_b0`" in message
    assert "--weights none" in message and "0x7f" not in message
    # Pillow names a BytesIO object, not the file: no reprs in messages.
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["predict", str(root / "run"), "notes.png"]) == 2
    err = capsys.readouterr().err
    assert "'notes.png'" in err and "not an image" in err
    assert "object at" not in err


@pytest.mark.requires_backend("tensorflow")
def test_backbones_table_and_weights_verify(capsys):
    assert main(["backbones", "--no-params", "--format", "json"]) == 0
    rows = {r["name"]: r for r in last_json(capsys.readouterr().out)}
    lite0 = rows["efficientnet_lite0"]
    assert lite0["image_size"] == 224 and lite0["blocks"] == 9
    assert lite0["weights_offline"] == "yes"
    assert rows["tiny_cnn"]["weights_offline"] == "none"
    assert rows["tiny_cnn"]["blocks"] == 3
    # 3x3 convs without bias (216 + 864 + 1728) and 4 values per BN channel.
    assert table.count_parameters("tiny_cnn") == 2808 + 4 * (8 + 12 + 16)
    assert main(["backbones", "--no-params"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["name", "modality"]
    assert any(line.startswith("efficientnet_lite0 ") for line in lines)
    assert main(["weights", "verify", "efficientnet_lite0"]) == 0
    (row,) = last_json(capsys.readouterr().out)
    assert row["status"] == "ok" and row["sha256"] == row["expected"]
    assert main(["weights", "fetch", "efficientnet_lite0", "--quiet"]) == 0
    assert last_json(capsys.readouterr().out)["status"] == "ok"
    assert main(["weights", "verify", "efficientnet_lite"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_text_models_export_keras_only(tmp_path):
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    model.transfer_metadata = {"modality": "text"}
    export_format = _formats_here()[0]  # one this backend can write
    path = str(tmp_path / "exported")
    with pytest.raises(ValueError, match="token ids"):
        deploy.export_model(model, path, export_format)
    assert not os.path.exists(path)


def test_config_file_flags_override(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"backbone": "a", "batch_size": 4,
                                  "stages": [{"name": "s", "epochs": 2,
                                              "learning_rate": 0.1}]}))
    resolved = run_config.resolve_config(
        str(config), {"backbone": "b", "data": "d", "batch_size": None})
    assert resolved["backbone"] == "b" and resolved["batch_size"] == 4
    assert resolved["stages"][0]["trainable_blocks"] == 0
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        run_config.resolve_config(str(config), {"data": "d", "batch_size": 0})
    with pytest.raises(ValueError, match="Received: distribute='ddp'"):
        run_config.resolve_config(str(config), {"data": "d", "distribute": "ddp"})
    assert resolved["feature_cache_dir"] is None
    assert run_config.resolve_config(
        str(config), {"data": "d", "feature_cache_dir": "f"}
    )["feature_cache_dir"] == "f"
    with pytest.raises(ValueError, match="Received: feature_cache_dir=3"):
        run_config.resolve_config(
            str(config), {"data": "d", "feature_cache_dir": 3})


def test_weights_none_and_stage_overrides_survive_resolution(tmp_path, monkeypatch):
    # `transfer train --weights none --epochs 1 --learning-rate 0.5` once
    # kept the pretrained default: the config was resolved twice and the
    # second pass read weights=None as "not given".
    from transfer import workflow

    seen = {}

    def train_run(config, run_dir, verbose):
        seen.update(config)
        raise RuntimeError("stop before training")

    monkeypatch.setattr(workflow, "train_run", train_run)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"stages": [{"name": "s", "epochs": 2,
                                              "learning_rate": 0.1}]}))
    code = main(["train", "--config", str(config), "--backbone", "tiny_cnn",
                 "--data", str(tmp_path), "--weights", "none",
                 "--epochs", "1", "--learning-rate", "0.5",
                 "--output", str(tmp_path / "run")])
    assert code == 1  # the stand-in's error
    assert seen["weights"] is None
    assert [(s["epochs"], s["learning_rate"]) for s in seen["stages"]] == [(1, 0.5)]


def test_validation_split_is_rebuilt_with_the_runs_seed_even_zero(monkeypatch,
                                                                  tmp_path):
    # `transfer report` rebuilds the run's validation split; a run trained
    # with seed 0 was rebuilt with the default seed (`seed or 1337`).
    from transfer import evaluation_data

    seeds = []

    def load_image_folder(*args, seed, **kwargs):
        seeds.append(seed)
        raise RuntimeError("stop after the split's arguments")

    # evaluation_data imports these by name: patch its references.
    monkeypatch.setattr(evaluation_data, "load_image_folder",
                        load_image_folder)
    monkeypatch.setattr(evaluation_data, "run_class_names",
                        lambda model: ["a", "b"])
    monkeypatch.setattr(evaluation_data, "run_modality",
                        lambda model: "image")
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten()])
    for config, expected in (({"validation_split": 0.2, "seed": 0}, 0),
                             ({"validation_split": 0.2}, 1337)):
        with pytest.raises(RuntimeError, match="stop after"):
            evaluation_data.load_labelled_data(str(tmp_path), model, config,
                                               validation_only=True)
        assert seeds[-1] == expected


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A 2-layer random-init ViT preset folder (32 px, patch 8) and an
    8-image class folder."""
    import keras_hub

    root = tmp_path_factory.mktemp("cli_vit")
    folder = str(root / "tiny_vit")
    keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
        hidden_dim=16, mlp_dim=32).save_to_preset(folder)
    _write_folder(str(root / "data"), num_images=8)
    return root, folder


def test_train_takes_the_vision_transformer_options(tiny_vit, capsys):
    root, vit = tiny_vit
    (root / "lora.yaml").write_text(
        "image_size: 32\nbatch_size: 4\nvalidation_split: 0\naugment: false\n"
        "stages:\n  - {name: lora, epochs: 1, learning_rate: 1.0e-2, "
        "trainable_blocks: all}\n")
    run = str(root / "run")
    code = main(["--quiet", "train", "--data", str(root / "data"),
                 "--backbone", vit, "--config", str(root / "lora.yaml"),
                 "--weights", "none", "--pooling", "avg", "--lora-rank", "2",
                 "--output", run])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    config = json.loads((root / "run" / "config.json").read_text())
    assert (config["pooling"], config["lora_rank"], config["drop_path"]) == (
        "avg", 2, 0.0)
    manifest = json.loads((root / "run" / "manifest.json").read_text())
    assert (manifest["pooling"], manifest["lora_rank"]) == ("avg", 2)
    # evaluate and report load the same model (avg pooling; Keras saves
    # the LoRA adapters merged into the q/k/v kernels).
    model, _ = transfer.workflow.load_run(run)
    assert model.get_layer("pooler").mode == "avg"
    assert model.transfer_metadata["pooling"] == "avg"
    code = main(["--quiet", "evaluate", run, "--data", str(root / "data")])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--pooling", "max"], "offers pooling ['token', 'avg'] (default "
         "'token'). Received: --pooling max"),
        (["--drop-path", "0.1"], "--drop-path works with ['dinov2', 'dinov3']"),
        (["--drop-path", "1.5"], "Option `--drop-path` must be a number >= 0 "
         "and < 1. Received: --drop-path 1.5"),
        (["--lora-rank", "0"], "Option `--lora-rank` must be an integer >= 1."
         " Received: --lora-rank 0"),
        (["--backbone", "tiny_cnn", "--lora-rank", "2"],
         "has no attention layers for LoRA adapters; --lora-rank works with"),
    ],
)
def test_vision_transformer_options_refused_before_data(tiny_vit, flags,
                                                        needle, capsys):
    root, vit = tiny_vit
    run = root / "refused"
    code = main(["--quiet", "train", "--data", str(root / "data"),
                 "--backbone", vit, "--weights", "none", "--output", str(run),
                 *flags])
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert "lora_rank=" not in err and "drop_path=" not in err
    assert not run.exists()


def test_text_runs_refuse_image_model_options(tmp_path, capsys):
    data = tmp_path / "texts.csv"
    data.write_text("text,label\nred apple,a\nblue sky,b\n")
    code = main(["--quiet", "train", "--data", str(data), "--backbone",
                 "minilm_l6", "--pooling", "avg", "--output",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "`--pooling` is an option of image models" in err, err
    assert "Received: --pooling avg" in err
