"""Learning-rate finder, multi-label and regression heads, TTA.

Covers: transfer.training.lr_finder, transfer.models.tasks, transfer.tta.
"""

import os

import keras
import numpy as np
import pytest

import transfer
from transfer.tensorboard.summaries import find_event_files


def test_find_learning_rate_sweeps_and_restores(tiny_model, tiny_data, tmp_path):
    tiny_model.compile("sgd", "sparse_categorical_crossentropy")
    before = [np.array(w, copy=True) for w in tiny_model.get_weights()]
    x, y = tiny_data
    sweep = transfer.find_learning_rate(
        tiny_model, (x, y), min_learning_rate=1e-5, max_learning_rate=10.0,
        num_steps=12, batch_size=8, plot_path=str(tmp_path / "lr.png"),
        log_dir=str(tmp_path / "tb"),
    )
    rates = np.asarray(sweep.learning_rates)
    assert rates[0] == pytest.approx(1e-5)
    assert np.all(np.diff(rates) > 0)
    assert len(sweep.losses) == len(rates) and 5 <= len(rates) <= 12
    assert 1e-5 <= sweep.suggestion <= 1.0 + 1e-9  # max_learning_rate / 10
    best = rates[int(np.argmin(sweep.smoothed_losses))]
    assert sweep.suggestion == pytest.approx(max(best / 10, 1e-5))
    for a, b in zip(before, tiny_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(tiny_model.optimizer, keras.optimizers.SGD)
    assert os.path.getsize(tmp_path / "lr.png") > 0
    assert find_event_files(str(tmp_path / "tb"))
    with pytest.raises(ValueError, match="Received: min_learning_rate=1"):
        transfer.find_learning_rate(tiny_model, (x, y), min_learning_rate=1,
                                    max_learning_rate=0.1)


def _multilabel_targets(n, empty_rows=0):
    y = np.zeros((n, 3), "float32")
    y[np.arange(n), np.arange(n) % 3] = 1
    y[:empty_rows] = 0
    return y


def test_multilabel_head_trains_and_picks_thresholds(tmp_path):
    x, _ = transfer.synthetic_images(16, 32, 2, seed=0)
    y = _multilabel_targets(16, empty_rows=2)
    model = transfer.build_multilabel_classifier("tiny_cnn", 3, weights=None)
    run_dir = str(tmp_path / "run")
    with pytest.warns(UserWarning, match="Training data: 2 of 16 rows have "
                      "no positive label"):
        histories = transfer.fit_recipe(
            model, [transfer.Stage("head", 1, 1e-2, augment=["mixup"])],
            (x, y), (x, _multilabel_targets(16)), run_dir=run_dir,
            batch_size=8, verbose=0,
        )
    assert {"accuracy", "auc", "f1", "val_auc"} <= set(histories[0].history)
    thresholds = model.transfer_metadata["thresholds"]
    assert len(thresholds) == 3 and all(0 < t < 1 for t in thresholds)
    reloaded = transfer.load_model(os.path.join(run_dir, "model.keras"))
    assert reloaded.transfer_metadata["thresholds"] == thresholds
    labels = transfer.predict_labels(reloaded, x)
    scores = model.predict(x, verbose=0)
    np.testing.assert_array_equal(labels, scores >= np.asarray(thresholds))
    with pytest.raises(ValueError, match=r"must be 0 or 1. Received: values \[2.0\]"):
        transfer.fit_recipe(model, [transfer.Stage("h", 1, 1e-3)],
                            (x, y * 2), run_dir=str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"shaped \(n, 3\). Received: shape \(16,\)"):
        transfer.fit_recipe(model, [transfer.Stage("h", 1, 1e-3)],
                            (x, y[:, 0]), run_dir=str(tmp_path / "bad"))


def test_regression_head_trains_and_reloads(tmp_path):
    x, _ = transfer.synthetic_images(16, 32, 2, seed=0)
    y = x.mean(axis=(1, 2, 3)) / 255.0
    model = transfer.build_regressor("tiny_cnn", weights=None)
    assert model.output_shape == (None, 1)
    run_dir = str(tmp_path / "run")
    histories = transfer.fit_recipe(
        model, [transfer.Stage("head", 1, 1e-2), transfer.Stage("all", 1, 1e-3,
                                                                 "all")],
        (x, y), (x, y), run_dir=run_dir, batch_size=8, verbose=0,
    )
    assert {"loss", "mae", "val_rmse"} <= set(histories[-1].history)
    reloaded = transfer.load_model(os.path.join(run_dir, "model.keras"))
    assert reloaded.transfer_metadata["task"] == "regression"
    np.testing.assert_allclose(reloaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    y_bad = y.copy()
    y_bad[3] = np.nan
    with pytest.raises(ValueError, match="finite numbers.*1 non-finite"):
        transfer.fit_recipe(model, [transfer.Stage("h", 1, 1e-3)],
                            (x, y_bad), run_dir=str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="class_weight and label_smoothing"):
        transfer.fit_recipe(
            model, [transfer.Stage("h", 1, 1e-3, class_weight="auto")],
            (x, y), run_dir=str(tmp_path / "bad2"), verbose=0)


def test_load_image_table(tmp_path):
    from PIL import Image

    x, _ = transfer.synthetic_images(6, 32, 2, seed=0)
    lines = ["file,cat,dog"]
    for i in range(6):
        Image.fromarray(x[i].astype("uint8")).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,{i % 2},{int(i < 3)}")
    (tmp_path / "tags.csv").write_text("\n".join(lines) + "\n")
    train, val, names = transfer.load_image_table(
        str(tmp_path / "tags.csv"), ["cat", "dog"], image_size=32,
        validation_split=0.5,
    )
    assert names == ["cat", "dog"] and train.class_names == names
    targets = np.concatenate([y for _, y in train] + [y for _, y in val])
    assert targets.shape == (6, 2)
    assert sorted(map(tuple, targets.tolist())) == sorted(
        (float(i % 2), float(i < 3)) for i in range(6))
    (tmp_path / "bad.csv").write_text("file,cat\n0.png,2\n../x.png,1\n")
    with pytest.raises(ValueError, match=r"row 3: '../x.png'.*\n.*row 2: cat='2'"):
        transfer.load_image_table(str(tmp_path / "bad.csv"), ["cat"],
                                  image_size=32)
    with pytest.raises(ValueError, match=r"no column\(s\) \['bird'\]"):
        transfer.load_image_table(str(tmp_path / "tags.csv"), ["bird"],
                                  image_size=32)


def test_tta_averages_flipped_views(tiny_model, tiny_data):
    x, y = tiny_data
    plain = keras.ops.convert_to_numpy(
        keras.ops.softmax(tiny_model(x, training=False)))
    flipped = keras.ops.convert_to_numpy(
        keras.ops.softmax(tiny_model(x[:, :, ::-1], training=False)))
    averaged = transfer.predict_tta(tiny_model, x, batch_size=5)
    np.testing.assert_allclose(averaged, (plain + flipped) / 2, atol=1e-5)
    results = transfer.evaluate_tta(tiny_model, (x, y))
    assert results["accuracy"] == pytest.approx(
        np.mean(averaged.argmax(-1) == y))
    assert results["accuracy_without_tta"] == pytest.approx(
        np.mean(plain.argmax(-1) == y))
    with pytest.raises(ValueError, match="Received: flips=\\('diagonal',\\)"):
        transfer.predict_tta(tiny_model, x, flips=("diagonal",))
