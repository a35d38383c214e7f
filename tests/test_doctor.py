"""The data doctor (`transfer.inspect_data`, `transfer doctor`) and the
split file `transfer train --split-file` takes.

Folders of synthetic PNGs (3 classes, 10 each, 32 pixels) with planted
problems: an exact copy, a re-encoded copy (same pixels, other bytes), an
unreadable file, a copy across train/val. The tiny random-init CNN of
conftest.py embeds them (`allow_random_weights=True`, tests only); one CLI
test runs the real EfficientNet-Lite0 weights.

Covers: transfer.doctor, transfer.data.layout.read_split_file,
transfer.workflow (split_file), transfer.cli (doctor, --split-file).
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import transfer
from transfer import cli
from transfer import run_config
from transfer.cli import main
from transfer.data.layout import DataLayout
from transfer.data.layout import read_split_file
from transfer.doctor import duplicates
from transfer.doctor import embeddings
from transfer.doctor import fix_split
from transfer.doctor import label_issues

CLASSES = ("ant", "bee", "cow")


def write_folder(root, num_per_class=10, seed=0):
    """`root/<class>/<i>.png`, synthetic images whose class is learnable."""
    x, y = transfer.synthetic_images(num_per_class * len(CLASSES), 32,
                                     len(CLASSES), seed=seed)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = os.path.join(root, CLASSES[label])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image.astype("uint8")).save(
            os.path.join(folder, f"{i}.png"))
    return root


def inspect(data, tmp_path, **kwargs):
    kwargs.setdefault("cache_dir", None)
    # The random tiny CNN's pooled features of any two synthetic images are
    # alike: only identical pixels count as near-duplicates here.
    kwargs.setdefault("similarity", 0.99999)
    return transfer.inspect_data(
        str(data), "tiny_cnn", output_dir=str(tmp_path / "doctor"),
        allow_random_weights=True, verbose=0, **kwargs)


def rows_of(diagnosis, issue):
    return [row for row in diagnosis.rows if row["issue"] == issue]


def test_finds_duplicates_unreadable_files_and_writes_outputs(tmp_path):
    data = write_folder(str(tmp_path / "data"))
    first = sorted(os.listdir(os.path.join(data, "ant")))[0]
    shutil.copy(os.path.join(data, "ant", first),
                os.path.join(data, "ant", "copy.png"))
    # Same pixels, other bytes: a near-duplicate, not an exact one.
    pixels = np.asarray(Image.open(os.path.join(data, "bee",
                        sorted(os.listdir(os.path.join(data, "bee")))[0])))
    Image.fromarray(pixels).save(os.path.join(data, "bee", "again.bmp"))
    with open(os.path.join(data, "cow", "broken.png"), "w") as f:
        f.write("not an image")
    diagnosis = inspect(data, tmp_path)
    summary = diagnosis.summary
    assert summary["files"] == 33
    assert [row["file"] for row in rows_of(diagnosis, "unreadable")] == [
        "cow/broken.png"]
    exact = {row["file"] for row in rows_of(diagnosis, "exact_duplicate")}
    assert exact == {f"ant/{first}", "ant/copy.png"}
    near = {row["file"] for row in rows_of(diagnosis, "near_duplicate")}
    assert "bee/again.bmp" in near
    assert summary["pairs"]["exact"] == 1
    assert summary["issues"]["unreadable"] == 1
    out = tmp_path / "doctor"
    with open(out / "issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["issue"] for row in rows} >= {"unreadable",
                                              "exact_duplicate",
                                              "near_duplicate"}
    page = (out / "report.html").read_text()
    assert "ant/copy.png" in page and "data:image/png;base64," in page
    assert json.loads((out / "summary.json").read_text())["files"] == 33
    # The projector: 32 readable files, their vectors, metadata, sprite.
    projector = out / "projector"
    config = (projector / "projector_config.pbtxt").read_text()
    dimension = diagnosis.embeddings.shape[1]
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import (
        ProjectorConfig,
    )

    parsed = text_format.Parse(config, ProjectorConfig()).embeddings[0]
    assert list(parsed.tensor_shape) == [32, dimension]
    assert parsed.sprite.image_path == "sprite.png"
    vectors = np.fromfile(projector / "embeddings.bytes", dtype="<f4")
    assert vectors.shape == (32 * dimension,)
    lines = (projector / "metadata.tsv").read_text().splitlines()
    assert lines[0] == "file\tlabel\tpart\tissues" and len(lines) == 33
    assert Image.open(projector / "sprite.png").size == (6 * 32, 6 * 32)


def test_flags_a_wrong_label_and_ranks_it_low(tmp_path):
    data = write_folder(str(tmp_path / "data"), num_per_class=12)
    # A bee image filed as a cow.
    bee = sorted(os.listdir(os.path.join(data, "bee")))[0]
    shutil.move(os.path.join(data, "bee", bee),
                os.path.join(data, "cow", "wrong.png"))
    diagnosis = inspect(data, tmp_path)
    flagged = rows_of(diagnosis, "label_error")
    assert "cow/wrong.png" in [row["file"] for row in flagged]
    row = next(r for r in flagged if r["file"] == "cow/wrong.png")
    assert (row["given_label"], row["suggested_label"]) == ("cow", "bee")
    wrong = diagnosis.files.names.index("cow/wrong.png")
    assert diagnosis.label_quality[wrong] == np.nanmin(
        diagnosis.label_quality)


def test_leakage_across_split_folders_and_fix_split(tmp_path):
    root = tmp_path / "data"
    write_folder(str(root / "train"), seed=0)
    write_folder(str(root / "val"), num_per_class=5, seed=1)
    leaked = sorted(os.listdir(root / "val" / "cow"))[0]
    shutil.copy(root / "val" / "cow" / leaked, root / "train" / "cow" /
                "leaked.png")
    diagnosis = inspect(root, tmp_path, fix_split=True)
    leaks = {row["file"]: row for row in rows_of(diagnosis, "leakage")}
    assert set(leaks) == {"train/cow/leaked.png", f"val/cow/{leaked}"}
    assert leaks[f"val/cow/{leaked}"]["detail"] == "exact duplicate in train"
    assert diagnosis.summary["split"] == {"moved_to_train": 0,
                                          "left_out": 1}
    split = json.loads((tmp_path / "doctor" / "split.json").read_text())
    assert f"val/cow/{leaked}" not in split["val"]
    assert split["left_out"] == [f"val/cow/{leaked}"]
    assert "train/cow/leaked.png" in split["train"]
    layout = transfer.data.layout.detect_layout(str(root))
    train, val = read_split_file(str(tmp_path / "doctor" / "split.json"),
                                 layout)
    assert len(train) == 31 and len(val) == 14
    assert os.path.join("cow", "leaked.png") in train


def test_a_run_directory_gives_the_features(tmp_path, tiny_run):
    data = write_folder(str(tmp_path / "data"), num_per_class=5)
    diagnosis = transfer.inspect_data(
        data, tiny_run["run_dir"], output_dir=str(tmp_path / "doctor"),
        cache_dir=None, similarity=0.99999, verbose=0)
    settings = diagnosis.summary["settings"]
    assert settings["run_dir"] == os.path.abspath(tiny_run["run_dir"])
    assert (settings["image_size"], settings["weights"]) == (32, "the run's")
    assert diagnosis.embeddings.shape == (15, 16)


@pytest.mark.backend_independent
def test_fix_split_moves_groups_into_training():
    pairs = [duplicates.Pair(0, 1, "near", 0.99),
             duplicates.Pair(1, 2, "exact", 1.0)]
    parts = ["val", "train", "val", "val"]
    fixed, moved, dropped = fix_split.leak_free_parts(parts, pairs, False)
    assert fixed == ["train", "train", "train", "val"]
    assert (moved, dropped) == ([0, 2], [])
    fixed, moved, dropped = fix_split.leak_free_parts(
        ["train", "test", "val"], [duplicates.Pair(0, 1, "near", 0.98),
                                   duplicates.Pair(1, 2, "near", 0.98)],
        True)
    assert fixed == ["train", None, None] and dropped == [1, 2]


def test_embeddings_are_cached_by_content(tmp_path):
    data = write_folder(str(tmp_path / "data"), num_per_class=5)
    cache = str(tmp_path / "cache")
    extractor = embeddings.feature_extractor("tiny_cnn",
                                             allow_random_weights=True)
    paths = sorted(os.path.join(data, c, n) for c in CLASSES
                   for n in os.listdir(os.path.join(data, c)))
    first = embeddings.embed_files(
        paths, extractor, embeddings.EmbeddingCache(cache, extractor.key),
        verbose=0)
    assert first.cached == 0
    again = embeddings.embed_files(
        paths, extractor, embeddings.EmbeddingCache(cache, extractor.key),
        verbose=0)
    assert again.cached == len(paths)
    np.testing.assert_array_equal(first.embeddings, again.embeddings)
    np.testing.assert_array_equal(first.thumbnails, again.thumbnails)
    assert first.embeddings.shape == (15, 16)


def test_an_interrupted_embedding_keeps_what_it_saved(tmp_path,
                                                     monkeypatch):
    data = write_folder(str(tmp_path / "data"), num_per_class=5)
    cache = str(tmp_path / "cache")
    extractor = embeddings.feature_extractor("tiny_cnn",
                                             allow_random_weights=True)
    paths = sorted(os.path.join(data, c, n) for c in CLASSES
                   for n in os.listdir(os.path.join(data, c)))
    monkeypatch.setattr(embeddings, "SAVE_EVERY", 4)
    calls = []
    real_predict = embeddings._backend.predict_on_batch

    def failing_predict(model, images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt  # stopped during the third batch
        return real_predict(model, images)

    monkeypatch.setattr(embeddings._backend, "predict_on_batch",
                        failing_predict)
    with pytest.raises(KeyboardInterrupt):
        embeddings.embed_files(
            paths, extractor, embeddings.EmbeddingCache(cache, extractor.key),
            batch_size=4, verbose=0)
    monkeypatch.setattr(embeddings._backend, "predict_on_batch", real_predict)
    again = embeddings.embed_files(
        paths, extractor, embeddings.EmbeddingCache(cache, extractor.key),
        batch_size=4, verbose=0)
    # The two finished batches were saved; the rest are embedded now.
    assert again.cached == 8
    assert all(reason is None for reason in again.reasons)


@pytest.mark.backend_independent
@pytest.mark.parametrize("counts, needle", [
    ({"ant": 10}, "one class"),
    ({"ant": 10, "bee": 3}, r"\{'bee': 3\} .* fewer than 5 images"),
])
def test_refuses_folders_too_small_for_cross_validation(tmp_path, counts,
                                                        needle):
    for name, count in counts.items():
        os.makedirs(tmp_path / "data" / name)
        for i in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / "data" / name /
                                          f"{i}.png")
    with pytest.raises(ValueError, match=needle):
        inspect(tmp_path / "data", tmp_path)
    assert not (tmp_path / "doctor").exists()


@pytest.mark.backend_independent
def test_refuses_backbone_without_pretrained_weights(tmp_path):
    data = write_folder(str(tmp_path / "data"), num_per_class=5)
    with pytest.raises(ValueError, match="no pretrained weights.*"
                       "Received: backbone='tiny_cnn'"):
        transfer.inspect_data(data, "tiny_cnn", output_dir=str(
            tmp_path / "doctor"), verbose=0)
    with pytest.raises(ValueError, match="similarity=1.5"):
        inspect(data, tmp_path, similarity=1.5)


@pytest.mark.backend_independent
def test_missing_cleanlab_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cleanlab", None)
    with pytest.raises(ImportError, match=r'keras-transfer\[doctor\]'):
        label_issues.require_cleanlab()


@pytest.mark.backend_independent
def test_read_split_file_checks(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["a/1.png"], "val": []}))
    with pytest.raises(ValueError, match="non-empty `val` list"):
        read_split_file(str(path), DataLayout("d", "d"))
    path.write_text(json.dumps({"train": ["cat/1.png"],
                                "val": ["cat/2.png"]}))
    layout = DataLayout("d", os.path.join("d", "train"),
                        os.path.join("d", "val"))
    with pytest.raises(ValueError, match="outside 'd/train'"):
        read_split_file(str(path), layout)
    with pytest.raises(FileNotFoundError, match="--fix-split"):
        read_split_file(str(tmp_path / "none.json"), layout)


def test_train_takes_the_split_file(tmp_path):
    data = write_folder(str(tmp_path / "data"), num_per_class=5)
    names = sorted(f"{c}/{n}" for c in CLASSES
                   for n in os.listdir(os.path.join(data, c)))
    val = [names[0], names[5], names[10]]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({
        "train": [n for n in names if n not in val], "val": val}))
    config = run_config.resolve_config(None, {
        "data": data, "backbone": "tiny_cnn", "weights": "none",
        "batch_size": 8, "augment": False, "split_file": str(split),
        "stages": [{"name": "head", "epochs": 1, "learning_rate": 1e-2}],
    })
    run_dir = str(tmp_path / "run")
    transfer.workflow.train_run(config, run_dir, verbose=0)
    with open(os.path.join(run_dir, "split_val.txt")) as f:
        assert f.read().splitlines() == val
    saved = json.loads(open(os.path.join(run_dir, "config.json")).read())
    assert saved["split"] == "file"
    assert saved["split_file"] == str(split)


@pytest.mark.backend_independent
def test_cli_defaults_match_the_library():
    assert cli.DOCTOR_DEFAULTS["similarity"] == duplicates.DEFAULT_SIMILARITY
    import inspect as python_inspect

    signature = python_inspect.signature(transfer.inspect_data)
    assert cli.DOCTOR_DEFAULTS["backbone"] == signature.parameters[
        "backbone"].default
    assert cli.DOCTOR_DEFAULTS["output"] == signature.parameters[
        "output_dir"].default


@pytest.mark.backend_independent
def test_cli_bad_input_exits_2_before_loading(tmp_path, capsys):
    code = main(["doctor", "--data", str(tmp_path / "missing")])
    assert code == 2
    assert "Data folder" in capsys.readouterr().err
    code = main(["doctor", "--data", str(tmp_path), "--similarity", "0"])
    assert code == 2
    assert "--similarity 0.0" in capsys.readouterr().err


@pytest.mark.backend_independent
def test_cli_doctor_with_real_weights(tmp_path, capsys):
    data = write_folder(str(tmp_path / "data"), num_per_class=5)
    shutil.copy(os.path.join(data, "ant", sorted(os.listdir(
        os.path.join(data, "ant")))[0]), os.path.join(data, "bee", "x.png"))
    output = str(tmp_path / "doctor")
    code = main(["doctor", "--data", data, "--output", output, "--quiet",
                 "--cache-dir", str(tmp_path / "cache"), "--fix-split"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["settings"]["backbone"] == "efficientnet_lite0"
    assert summary["settings"]["weights"] == "imagenet"
    assert summary["issues"]["exact_duplicate"] == 2
    assert os.path.exists(os.path.join(output, "split.json"))


@pytest.mark.backend_independent
def test_near_pairs_by_embedding_or_by_pixels():
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 255, (32, 32, 3), dtype="uint8")
    thumbnails = np.stack([pattern, pattern,
                           rng.integers(0, 255, (32, 32, 3), dtype="uint8")])
    # 0 and 1: cosine 0.9 (below 0.95), the same pixels; 2: unrelated.
    vectors = np.array([[1.0, 0.0], [0.9, 0.436], [0.0, 1.0]], "float32")
    usable = [True, True, True]
    hashes = ["a", "b", "c"]
    assert duplicates.near_pairs(vectors, hashes, usable, 0.95) == []
    found = duplicates.near_pairs(vectors, hashes, usable, 0.95, thumbnails)
    assert [(p.first, p.second, p.kind) for p in found] == [(0, 1, "near")]
    assert found[0].similarity == pytest.approx(0.9, abs=0.01)
    # Above the threshold the embeddings alone decide.
    found = duplicates.near_pairs(vectors, hashes, usable, 0.89)
    assert [(p.first, p.second) for p in found] == [(0, 1)]


@pytest.mark.backend_independent
def test_train_split_file_flag_and_config_key(tmp_path):
    args = cli.build_parser().parse_args(
        ["train", "--data", "d", "--backbone", "b", "--split-file", "s.json"])
    assert args.split_file == "s.json"
    with pytest.raises(ValueError, match="Received: split_file=3"):
        run_config.resolve_config(None, {"data": "d", "backbone": "b",
                                         "split_file": 3})
