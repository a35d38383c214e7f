"""Data layouts users already have: split roots and stratified splits.

A split root (`train/`, `val/` or `valid/` or `validation/`, optional
`test/`) is trained and evaluated on as given; a class-folder root is split
seeded and stratified, and the split is written into the run directory and
rebuilt from there. Bad layouts fail before any model is built. Tiny 32 px
PNGs, the `tiny_cnn` backbone with no weights, one epoch.

Covers: transfer.data.layout, transfer.data.images (stratified split, listed
files), transfer.workflow (train_run), transfer.evaluation_data
(labelled_dataset), transfer.cli (evaluate, report on split roots).
"""

import logging
import os

import keras
import pytest

import transfer
from transfer import evaluation_data
from transfer import run_config
from transfer import workflow
from transfer.cli import main
from transfer.data import layout as layout_lib

pytestmark = pytest.mark.backend_independent


def write_classes(folder, counts, seed=0):
    """`{class: number of PNGs}` under `folder`; returns the relative paths."""
    names = []
    x, _ = transfer.synthetic_images(sum(counts.values()), 32, 2, seed=seed)
    images = iter(x)
    for label, count in counts.items():
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        for i in range(count):
            name = os.path.join(label, f"{i}.png")
            keras.utils.save_img(os.path.join(folder, name), next(images))
            names.append(name)
    return names


def config_for(data, **overrides):
    return run_config.resolve_config(None, {
        "data": str(data), "backbone": "tiny_cnn", "weights": "none",
        "image_size": 32, "batch_size": 4, "augment": False,
        "stages": [{"name": "head", "epochs": 1, "learning_rate": 1e-2}],
        **overrides,
    })


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def last_json(text):
    import json

    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_split_root_is_detected(tmp_path, val_name):
    for split in ("train", val_name, "test"):
        write_classes(str(tmp_path / split), {"cat": 1, "dog": 1})
    found = layout_lib.detect_layout(str(tmp_path))
    assert found == layout_lib.DataLayout(
        str(tmp_path), str(tmp_path / "train"), str(tmp_path / val_name),
        str(tmp_path / "test"))
    assert found.is_split


def test_class_named_train_is_a_class_folder_root(tmp_path):
    write_classes(str(tmp_path), {"train": 2, "bus": 2})
    found = layout_lib.detect_layout(str(tmp_path))
    assert not found.is_split and found.val is None


def _bad_layouts():
    def extra_test_class(root):
        for split in ("train", "val"):
            write_classes(os.path.join(root, split), {"cat": 1, "dog": 1})
        write_classes(os.path.join(root, "test"), {"cat": 1, "bird": 1})

    def val_lacks_class(root):
        write_classes(os.path.join(root, "train"), {"cat": 1, "dog": 1})
        write_classes(os.path.join(root, "val"), {"cat": 1})

    def empty_val(root):
        write_classes(os.path.join(root, "train"), {"cat": 1, "dog": 1})
        os.makedirs(os.path.join(root, "val", "cat"))

    def mixed(root):
        write_classes(os.path.join(root, "train"), {"cat": 1, "dog": 1})
        write_classes(root, {"bird": 1})

    def train_without_classes(root):
        os.makedirs(os.path.join(root, "train"))
        write_classes(os.path.join(root, "val"), {"cat": 1, "dog": 1})

    def two_val_folders(root):
        for split in ("train", "val", "valid"):
            write_classes(os.path.join(root, split), {"cat": 1, "dog": 1})

    def val_without_train(root):
        for split in ("val", "test"):
            write_classes(os.path.join(root, split), {"cat": 1, "dog": 1})

    return [
        (extra_test_class, "test", r"\['bird'\] only in .*\['dog'\] only"),
        (val_lacks_class, "val", r"\[\] only in .*\['dog'\] only in"),
        (empty_val, "val", "is empty"),
        (mixed, "", r"mixes layouts: .*\['bird'\]"),
        (train_without_classes, "train", "holds no class folders"),
        (two_val_folders, "", "2 validation folders"),
        (val_without_train, "", "no 'train/' folder"),
    ]


@pytest.mark.parametrize("make, folder, message", _bad_layouts(),
                         ids=lambda v: getattr(v, "__name__", None))
def test_bad_layouts_fail_before_any_model(tmp_path, monkeypatch, make,
                                           folder, message):
    root = str(tmp_path / "data")
    make(root)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(workflow, "build_classifier", no_model)
    with pytest.raises(ValueError, match=message) as error:
        workflow.train_run(config_for(root), str(tmp_path / "run"),
                           verbose=0)
    assert os.path.join(root, folder).rstrip(os.sep) in str(error.value)
    assert "Received: " in str(error.value)
    assert not os.path.exists(tmp_path / "run")


def test_missing_data_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="Received: data="):
        layout_lib.detect_layout(str(tmp_path / "nowhere"))


def test_load_image_folder_split_is_stratified(tmp_path):
    counts = {"a": 10, "b": 5, "c": 3}
    names = write_classes(str(tmp_path), counts)
    parts = []
    for seed in (1, 1, 2):
        train, val, _ = transfer.load_image_folder(
            str(tmp_path), image_size=32, batch_size=4,
            validation_split=0.3, seed=seed, verbose=0)
        parts.append(tuple(
            sorted(os.path.relpath(p, tmp_path) for p in part.file_paths)
            for part in (train, val)))
    train, val = parts[0]
    assert sorted(train + val) == sorted(names) and not set(train) & set(val)
    held = {label: sum(layout_lib.class_of(n) == label for n in val)
            for label in counts}
    assert held == {"a": 3, "b": 2, "c": 1}  # round(n * 0.3), at least 1
    assert parts[1] == parts[0]  # seeded
    assert parts[2] != parts[0]
    # The validation part is read unshuffled, in its files' order.
    labels = [int(y) for _, batch in val_labels(str(tmp_path)) for y in batch]
    assert labels == sorted(labels)


def val_labels(folder):
    _, val, _ = transfer.load_image_folder(
        folder, image_size=32, batch_size=4, validation_split=0.3, seed=1,
        verbose=0)
    return val


def test_one_image_class_cannot_be_split(tmp_path):
    write_classes(str(tmp_path), {"a": 4, "b": 1})
    with pytest.raises(ValueError, match="Class 'b' has 1 file.*Received: "):
        transfer.load_image_folder(str(tmp_path), image_size=32, verbose=0)


def test_split_root_trains_on_folders_and_evaluates_on_test(
        tmp_path, caplog, capsys):
    root = tmp_path / "data"
    write_classes(str(root / "train"), {"cat": 4, "dog": 4})
    write_classes(str(root / "valid"), {"cat": 2, "dog": 1}, seed=1)
    write_classes(str(root / "test"), {"cat": 3, "dog": 2}, seed=2)
    run_dir = str(tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="transfer.workflow"):
        model = workflow.train_run(config_for(root), run_dir, verbose=0)
    assert "validation_split=0.2 is ignored" in caplog.text
    assert not any(name.startswith("split_") for name in os.listdir(run_dir))
    model, config = workflow.load_run(run_dir)
    assert config["split"] == "folders"
    val = evaluation_data.labelled_dataset(str(root), model, config,
                                           validation_only=True,
                                           run_dir=run_dir)
    assert val.directory == str(root / "valid") and len(val.file_paths) == 3

    assert main(["evaluate", run_dir, "--data", str(root), "--quiet"]) == 0
    assert last_json(capsys.readouterr().out)["num_examples"] == 5
    assert main(["report", run_dir, "--quiet"]) == 0
    assert last_json(capsys.readouterr().out)["split"] == "test"

    os.rename(root / "test", tmp_path / "elsewhere")
    caplog.clear()
    assert main(["evaluate", run_dir, "--data", str(root), "--quiet"]) == 0
    assert last_json(capsys.readouterr().out)["num_examples"] == 3
    assert "no test/ folder: evaluating on its validation folder" in (
        caplog.text + capsys.readouterr().err)


def test_class_folder_root_writes_and_rebuilds_its_split(tmp_path):
    root = tmp_path / "data"
    names = write_classes(str(root), {"cat": 10, "dog": 5})
    run_dir = str(tmp_path / "run")
    workflow.train_run(config_for(root), run_dir, verbose=0)
    train = read_lines(os.path.join(run_dir, "split_train.txt"))
    val = read_lines(os.path.join(run_dir, "split_val.txt"))
    assert sorted(train + val) == sorted(n.replace(os.sep, "/")
                                         for n in names)
    assert sorted(layout_lib.class_of(n) for n in val) == ["cat", "cat",
                                                           "dog"]
    model, config = workflow.load_run(run_dir)
    assert config["split"] == "stratified"

    def rebuilt():
        data = evaluation_data.labelled_dataset(str(root), model, config,
                                                validation_only=True,
                                                run_dir=run_dir)
        return [p.replace(os.sep, "/") for p in data.file_paths]

    assert rebuilt() == val
    # The list is what is read, not a split made again.
    with open(os.path.join(run_dir, "split_val.txt"), "w") as f:
        f.write("cat/0.png\ndog/4.png\n")
    assert rebuilt() == ["cat/0.png", "dog/4.png"]
    # A refused second run leaves the split files as they were.
    with pytest.raises(ValueError, match="run_dir"):
        workflow.train_run(config_for(root, seed=7), run_dir, verbose=0)
    assert read_lines(os.path.join(run_dir, "split_train.txt")) == train
    os.remove(root / "dog" / "4.png")
    with pytest.raises(FileNotFoundError,
                       match=r"dog/4.png.*Restore them.*--data"):
        rebuilt()


def test_runs_without_split_files_keep_their_split(tmp_path):
    # Runs made before split files: Keras's own seeded split, unstratified.
    write_classes(str(tmp_path), {"0": 6, "1": 6})
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    old = {"validation_split": 0.25, "seed": 3}
    data = evaluation_data.labelled_dataset(str(tmp_path), model, old,
                                            validation_only=True)
    _, keras_val = keras.utils.image_dataset_from_directory(
        str(tmp_path), image_size=(32, 32), validation_split=0.25,
        subset="both", seed=3)
    assert data.file_paths == [os.path.relpath(p, tmp_path)
                               for p in keras_val.file_paths]
    # A run of stratified splits whose split files are gone: made again.
    data = evaluation_data.labelled_dataset(
        str(tmp_path), model, dict(old, split="stratified"),
        validation_only=True)
    expected = layout_lib.stratified_split(
        [os.path.join(c, f"{i}.png") for c in "01" for i in range(6)],
        0.25, 3)[1]
    assert sorted(data.file_paths) == expected


def test_train_only_root_is_split_and_has_nothing_to_test(tmp_path):
    root = tmp_path / "data"
    write_classes(str(root / "train"), {"0": 3, "1": 3})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # Split files name paths relative to the data root, train/ included.
    (run_dir / "split_val.txt").write_text("train/0/1.png\ntrain/1/2.png\n")
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    config = {"validation_split": 0.3, "seed": 1, "split": "stratified"}
    data = evaluation_data.labelled_dataset(str(root), model, config,
                                            validation_only=True,
                                            run_dir=str(run_dir))
    assert data.directory == str(root / "train")
    assert data.file_paths == [os.path.join("0", "1.png"),
                               os.path.join("1", "2.png")]
    with pytest.raises(ValueError, match=r"no test/ or val/.*Received: data"):
        evaluation_data.labelled_dataset(str(root), model, config)
