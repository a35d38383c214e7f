"""Sentence-pair classification on a tiny BERT preset (no weights, no
network): the model, the CSV loader, the command line and bad input.

Covers: `text_pairs` in transfer.models.text, `text_pair_column` in
transfer.data.text, transfer.workflow and transfer.cli on CSV files.
"""

import csv
import json

import numpy as np
import pytest
from tiny_bert import WORDS
from tiny_bert import make_tiny_bert_preset

import transfer
from transfer import cli
from transfer.data import text as text_data
from transfer.models import text


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    return make_tiny_bert_preset(str(tmp_path_factory.mktemp("tiny_bert")))


def shared_first_word(num, seed=0):
    """Pairs labelled 1 when both texts start with the same word."""
    rng = np.random.default_rng(seed)
    starts, rest = WORDS[:2], WORDS[5:10]
    first, second, labels = [], [], []
    for i in range(num):
        a = rng.choice(starts)
        same = i % 2
        b = a if same else starts[1 - starts.index(a)]
        first.append(" ".join([a, *rng.choice(rest, 2)]))
        second.append(" ".join([b, *rng.choice(rest, 2)]))
        labels.append(same)
    return (first, second), np.asarray(labels, dtype="int32")


def which_text_is_red(num, seed=0):
    """Pairs where exactly one text holds "red"; the label says which (1:
    the second). Every pair holds the same words in some order, so only the
    split into first and second text tells the classes apart."""
    rng = np.random.default_rng(seed)
    rest = WORDS[5:10]
    first, second, labels = [], [], []
    for i in range(num):
        label = i % 2
        a, b = list(rng.choice(rest, 2)), list(rng.choice(rest, 2))
        (b if label else a).insert(int(rng.integers(0, 3)), "red")
        first.append(" ".join(a))
        second.append(" ".join(b))
        labels.append(label)
    return (first, second), np.asarray(labels, dtype="int32")


def _write_csv(path, pairs, labels, names=("premise", "hypothesis", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for a, b, y in zip(*pairs, labels, strict=True):
            writer.writerow([a, b, ["other", "same"][y]])
    return str(path)


def test_pair_model_learns_a_pair_task(tiny_preset, tmp_path):
    model = text.build_text_classifier(tiny_preset, 2, sequence_length=16,
                                       text_pairs=True)
    assert model.transfer_metadata["text_pairs"] is True
    tokens = model.preprocessor(x=(["red apple"], ["red sky"]))
    # One sequence: [CLS] first [SEP] second [SEP], segments 0 then 1.
    segments = np.asarray(tokens["segment_ids"])[0].tolist()
    assert segments[:7] == [0, 0, 0, 0, 1, 1, 1]
    x, y = which_text_is_red(64)
    val = which_text_is_red(32, seed=1)
    transfer.fit_recipe(model, [transfer.Stage("all", 8, 1e-2, "all")],
                        (x, y), run_dir=str(tmp_path / "run"), batch_size=16,
                        verbose=0)
    accuracy = np.mean(model.predict(val[0], verbose=0).argmax(-1) == val[1])
    assert accuracy >= 0.75, accuracy
    reloaded = transfer.load_model(str(tmp_path / "run" / "model.keras"))
    assert reloaded.transfer_metadata["text_pairs"] is True
    np.testing.assert_allclose(reloaded.predict(val[0], verbose=0),
                               model.predict(val[0], verbose=0), atol=1e-5)


def test_wrong_kind_of_texts_is_refused_before_training(tiny_preset, tmp_path):
    pairs = text.build_text_classifier(tiny_preset, 2, sequence_length=16,
                                       text_pairs=True)
    single = text.build_text_classifier(tiny_preset, 2, sequence_length=16)
    x, y = shared_first_word(8)
    stage = [transfer.Stage("head", 1, 1e-3, 0)]
    with pytest.raises(ValueError, match="classifies sentence pairs.*"
                       "Received: the x of train_data = 8 single texts"):
        transfer.fit_recipe(pairs, stage, (x[0], y),
                            run_dir=str(tmp_path / "a"), verbose=0)
    with pytest.raises(ValueError, match="classifies single texts.*"
                       "text_pairs=True.*Received: the x of train_data = "
                       "pairs: 8 first and 8 second texts"):
        transfer.fit_recipe(single, stage, (x, y),
                            run_dir=str(tmp_path / "b"), verbose=0)
    with pytest.raises(ValueError, match="8 first texts, 7 second texts"):
        transfer.fit_recipe(pairs, stage, ((x[0], x[1][:7]), y),
                            run_dir=str(tmp_path / "c"), verbose=0)
    with pytest.raises(ValueError, match="Received: text_pairs='yes'"):
        text.build_text_classifier(tiny_preset, 2, text_pairs="yes")
    assert not (tmp_path / "a" / "model.keras").exists()


@pytest.mark.backend_independent
def test_csv_with_two_text_columns(tmp_path):
    x, y = shared_first_word(10)
    path = _write_csv(tmp_path / "pairs.csv", x, y)
    (first, second), labels, names = text_data.load_text_csv(
        path, text_column="premise", text_pair_column="hypothesis")
    assert (first, second) == x and names == ["other", "same"]
    assert labels.tolist() == y.tolist()
    train, val = text_data.split_texts((first, second), labels, 0.4, 0)
    assert isinstance(train[0], tuple) and len(val[0][1]) == len(val[1]) == 4
    with pytest.raises(ValueError, match=r"no column\(s\) \['hypo'\].*"
                       r"--text-pair-column.*text_pair_column='hypo'"):
        text_data.load_text_csv(path, text_column="premise",
                                text_pair_column="hypo")
    (tmp_path / "gap.csv").write_text("premise,hypothesis,label\na,,same\n")
    with pytest.raises(ValueError, match=r"empty text in row\(s\) \[2\] of "
                       "column 'hypothesis'"):
        text_data.load_text_csv(str(tmp_path / "gap.csv"),
                                text_column="premise",
                                text_pair_column="hypothesis")


@pytest.mark.backend_independent
def test_cli_train_predict_evaluate_on_pairs(tiny_preset, tmp_path, capsys):
    x, y = shared_first_word(24)
    data = _write_csv(tmp_path / "nli.csv", x, y)
    run = str(tmp_path / "run")
    code = cli.main([
        "--quiet", "train", "--data", data, "--backbone", tiny_preset,
        "--text-column", "premise", "--text-pair-column", "hypothesis",
        "--weights", "none", "--epochs", "1,1", "--batch-size", "8",
        "--sequence-length", "16", "--validation-split", "0.25",
        "--output", run,
    ])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["class_names"] == ["other", "same"]
    config = json.load(open(f"{run}/config.json"))
    assert config["modality"] == "text"
    assert config["text_pair_column"] == "hypothesis"
    manifest = json.load(open(f"{run}/manifest.json"))
    assert manifest["text_pairs"] is True

    code = cli.main(["--quiet", "predict", run, data, "--format", "jsonl"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert len(rows) == 24 and rows[0]["file"] == f"{data}:2"
    assert rows[0]["predictions"][0]["class"] in ("other", "same")

    code = cli.main(["--quiet", "evaluate", run, "--data", data])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert 0 <= json.loads(out.out)["accuracy"] <= 1

    # A pair model given single texts: refused, naming the columns.
    (tmp_path / "one.txt").write_text("red apple sky")
    code = cli.main(["--quiet", "predict", run, str(tmp_path / "one.txt")])
    err = capsys.readouterr().err
    assert code == 2 and "'premise' and 'hypothesis'" in err


@pytest.mark.backend_independent
def test_cli_pair_input_errors_before_training(tiny_preset, tmp_path, capsys):
    x, y = shared_first_word(8)
    data = _write_csv(tmp_path / "nli.csv", x, y)
    run = tmp_path / "run"
    code = cli.main([
        "--quiet", "train", "--data", data, "--backbone", tiny_preset,
        "--text-column", "premise", "--text-pair-column", "hypothesis_text",
        "--output", str(run),
    ])
    err = capsys.readouterr().err
    assert code == 2
    assert "no column(s) ['hypothesis_text']" in err and "--text-pair-column" in err
    assert not run.exists()
    folder = tmp_path / "reviews" / "pos"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("great")
    code = cli.main([
        "--quiet", "train", "--data", str(tmp_path / "reviews"),
        "--backbone", tiny_preset, "--text-pair-column", "hypothesis",
        "--output", str(run),
    ])
    err = capsys.readouterr().err
    assert code == 2 and "is a folder" in err and "--text-pair-column" in err
