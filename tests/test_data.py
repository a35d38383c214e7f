"""Image data: folders, built-in sets, tf.data pipelines.

Covers: transfer.data.images, transfer.data.tables.
"""

import numpy as np
import pytest
from PIL import Image

import transfer

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def _write_images(root, classes, per_class=3, size=20):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_image_folder(tmp_path):
    _write_images(tmp_path, ["cat", "dog"], per_class=5)
    train, val, names = transfer.load_image_folder(str(tmp_path), image_size=24, batch_size=4)
    assert names == ["cat", "dog"]
    images, labels = next(iter(train))
    assert tuple(images.shape[1:]) == (24, 24, 3)
    total = sum(len(y) for _, y in train) + sum(len(y) for _, y in val)
    assert total == 10


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        transfer.load_image_folder(str(tmp_path / "nope"), image_size=24)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="No images"):
        transfer.load_image_folder(str(tmp_path / "empty"), image_size=24)
    _write_images(tmp_path / "one", ["only"])
    with pytest.raises(ValueError, match="at least two"):
        transfer.load_image_folder(str(tmp_path / "one"), image_size=24)
    _write_images(tmp_path / "hole", ["a", "b"])
    (tmp_path / "hole" / "c").mkdir()
    with pytest.raises(ValueError, match=r"\['c'\].*hold no images"):
        transfer.load_image_folder(str(tmp_path / "hole"), image_size=24)


def test_digits_and_subsampling():
    ds = transfer.load_dataset("digits", labels_per_class=5, seed=0)
    assert ds.x_train.shape == (50, 8, 8)
    assert np.bincount(ds.y_train).tolist() == [5] * 10
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() > 200
    again = transfer.load_dataset("digits", labels_per_class=5, seed=0)
    np.testing.assert_array_equal(ds.y_train, again.y_train)
    with pytest.raises(ValueError, match="Received: name='mnist'"):
        transfer.load_dataset("mnist")


def test_make_dataset_gray_to_rgb_and_resize():
    x = np.random.default_rng(0).integers(0, 255, (10, 8, 8), dtype=np.uint8)
    y = np.arange(10) % 2
    ds = transfer.make_dataset(x, y, image_size=16, batch_size=4,
                               augment=transfer.data.images.default_augmentation(seed=0))
    images, labels = next(iter(ds))
    assert tuple(images.shape) == (4, 16, 16, 3)
    assert float(np.max(images)) <= 255.0
    with pytest.raises(ValueError, match="Received: shape="):
        transfer.make_dataset(np.zeros((2, 3)), image_size=8)


def test_synthetic_images_are_seeded():
    a = transfer.synthetic_images(8, 16, 2, seed=3)
    b = transfer.synthetic_images(8, 16, 2, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (8, 16, 16, 3) and set(a[1]) == {0, 1}
