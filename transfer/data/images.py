"""Data every backend's `fit` accepts: folders, arrays, built-in sets.

Images are RGB pixels in `[0, 255]` (the classifier preprocesses inside the
model). Array pipelines are `tf.data` datasets, which Keras 3 feeds to the
TensorFlow, JAX and torch backends alike.
"""

import collections
import gzip
import logging
import os
import shutil

import keras
import numpy as np

from transfer.backbones.spec import check_interpolation
from transfer.data import fingerprint
from transfer.data import image_files
from transfer.data import layout
from transfer.data import preflight
from transfer.data.image_files import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_MNIST_FILES = (
    "train-labels-idx1-ubyte.gz",
    "train-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
)

ArrayDataset = collections.namedtuple(
    "ArrayDataset", ["name", "x_train", "y_train", "x_test", "y_test", "class_names"]
)


def _class_folders(directory):
    """`{class folder: number of images}`; refuses two class folders that
    are one folder (a symlink to another class, or one inside another)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Image folder '{directory}' does not exist. Pass a directory "
            "with one subfolder of images per class. "
            f"Received: directory={directory!r}"
        )
    folders = sorted(
        d for d in os.listdir(directory)
        if os.path.isdir(os.path.join(directory, d))
        and not image_files.is_hidden(d)
    )
    real = {d: os.path.realpath(os.path.join(directory, d)) for d in folders}
    # Sibling folders are distinct unless one is a symlink.
    linked = any(os.path.islink(os.path.join(directory, d)) for d in folders)
    for first in folders if linked else ():
        for second in folders:
            inside = real[second].startswith(real[first] + os.sep)
            if (first < second and real[first] == real[second]) or inside:
                raise ValueError(
                    f"Class folders '{first}' and '{second}' in '{directory}' "
                    "hold the same files (a symlink resolves one into the "
                    "other): they would train as two classes of identical "
                    "images. Remove the symlink, or give the class a folder "
                    f"of its own. Received: '{first}' -> '{real[first]}', "
                    f"'{second}' -> '{real[second]}'"
                )
    files, _ = image_files.image_files(directory)
    counts = {folder: 0 for folder in folders}
    for name in files:
        counts[name.split(os.sep, 1)[0]] += 1
    return counts


def _split_fingerprint(dataset, report, source, subset, settings):
    """The `transfer.data.fingerprint` of one subset of a folder."""
    names = {
        image_files.view_name(name): name for name in report.good_files
    }
    files = {}
    for path in getattr(dataset, "file_paths", []):
        name = names.get(os.path.relpath(path, source), os.path.relpath(
            path, source))
        files[fingerprint.portable_name(name)] = report.stats.get(name)
    return {"kind": "image_folder", **settings, "subset": subset,
            "files": files}


def load_image_folder(
    directory,
    *,
    image_size,
    batch_size=32,
    validation_split=0.2,
    seed=1337,
    skip_bad_files=False,
    shuffle=True,
    verbose=1,
    files=None,
    stratify=True,
    interpolation="bilinear",
):
    """Reads a folder with one subfolder of images per class.

    Uses `keras.utils.image_dataset_from_directory` with a seeded, stratified
    split (every class in both parts, in the same proportion:
    `transfer.data.layout.stratified_split`), after checking the layout and
    decoding every image once (`transfer.data.preflight.check_images`,
    cached), so that a wrong path or a bad file fails before any training.
    Grayscale, RGBA, CMYK and 16-bit images become RGB; bad files are an
    error listing them, or are left out with `skip_bad_files=True`. The
    returned datasets carry `class_names`,
    `transfer_preflight` (the `PreflightReport`, which `fit_recipe` writes
    into the manifest) and, as Keras's do, `file_paths`: the image files
    under `directory`, in the order the dataset yields them for the
    validation set and with `shuffle=False` (a shuffled training set is
    shuffled again every epoch), and
    `transfer_fingerprint` (the files of the split and the settings, which
    a resumed `fit_recipe` checks; see `transfer.data.fingerprint`). Hidden
    files (`.name`, macOS `._name`) are skipped and counted; two class
    folders that are one folder (a symlink) are refused.

    Args:
        directory: the root folder; class names are its subfolder names.
        image_size: square size images are resized to.
        batch_size: batch size. Defaults to `32`.
        validation_split: fraction held out for validation, or `0` for none.
            Defaults to `0.2`.
        seed: seed of the split and shuffling. Defaults to `1337`.
        skip_bad_files: leave out empty, truncated and non-image files
            instead of raising. Defaults to `False`.
        shuffle: shuffle the training files every epoch. `False` keeps
            Keras's sorted order, for evaluation. The validation files are
            never shuffled, and which files are held out does not depend on
            it. Defaults to `True`.
        verbose: `1` shows the preflight progress bar. Defaults to `1`.
        files: read only these files (paths relative to `directory`, as
            a run's split files list them), or `None` for all.
            Defaults to `None`.
        stratify: `False` uses Keras's own seeded split instead (not
            stratified; what runs made before stratified splits used, and
            there `shuffle` changes which files are held out).
            Defaults to `True`.
        interpolation: how images are resized to `image_size`, one of
            `transfer.backbones.spec.INTERPOLATIONS`; pass the backbone's
            (`transfer.get_backbone_spec(name).interpolation`) to resize as
            it was pretrained. Part of the fingerprint; `fit_recipe`
            records it with the model, for `evaluate` and `predict`.
            Defaults to `"bilinear"`.

    Returns:
        `(train_ds, val_ds, class_names)`; `val_ds` is `None` without split.

    Raises:
        FileNotFoundError: the folder, or one of `files`, does not exist.
        ValueError: no images, fewer than two classes, an empty class, a
            class with one image and a split, two class folders that are
            one, bad image files (unless `skip_bad_files`), or an unknown
            `interpolation`.

    Example:

    >>> import os
    >>> x, y = transfer.synthetic_images(10, 32, 2)
    >>> for i, (image, label) in enumerate(zip(x, y)):
    ...     folder = os.path.join("pets", ["cat", "dog"][label])
    ...     os.makedirs(folder, exist_ok=True)
    ...     keras.utils.save_img(os.path.join(folder, f"{i}.png"), image)
    >>> with open("pets/dog/broken.png", "w") as f:  # not an image
    ...     _ = f.write("oops")
    >>> train, val, names = transfer.load_image_folder(
    ...     "pets", image_size=32, batch_size=4, skip_bad_files=True,
    ...     verbose=0)
    >>> names
    ['cat', 'dog']
    >>> train.transfer_preflight.to_dict()["skipped"]
    1
    >>> images, labels = next(iter(train))
    >>> tuple(images.shape)
    (4, 32, 32, 3)
    >>> sorted(os.path.dirname(path) for path in val.file_paths)  # stratified
    ['pets/cat', 'pets/dog']
    """
    check_interpolation(interpolation)
    counts = _class_folders(directory)
    total = sum(counts.values())
    if total == 0:
        raise ValueError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under class "
            f"subfolders of '{directory}'. Expected <directory>/<class>/<image>. "
            f"Received: directory={directory!r}"
        )
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise ValueError(
            f"Class folder(s) {empty} in '{directory}' hold no images; Keras "
            "would create classes that never occur. Add images or remove them."
        )
    if len(counts) < 2:
        raise ValueError(
            f"'{directory}' has {len(counts)} class folder(s) "
            f"({sorted(counts)}); classification needs at least two."
        )
    listed = _listed_files(directory, files)
    report = preflight.check_images(
        directory, skip_bad_files=skip_bad_files, verbose=verbose
    )
    classes = list(counts)
    kwargs = dict(
        labels="inferred",
        label_mode="int",
        image_size=(image_size, image_size),
        interpolation=interpolation,
        batch_size=batch_size,
        seed=seed,
    )
    # Bad files and classes left empty by them fail here, before a split.
    source = preflight.usable_directory(report, classes)
    if validation_split and not stratify:
        parts = keras.utils.image_dataset_from_directory(
            source, validation_split=validation_split, subset="both",
            shuffle=shuffle, **kwargs
        )
        parts = tuple((dataset, source) for dataset in parts)
    else:
        parts = _stratified_parts(
            report, classes, source, listed, kwargs,
            validation_split=validation_split, seed=seed, shuffle=shuffle)
    class_names = list(parts[0][0].class_names)
    settings = {
        "directory": report.directory, "image_size": image_size,
        "interpolation": interpolation,
        "seed": seed, "validation_split": validation_split,
        "skip_bad_files": skip_bad_files, "augmentation": None,
    }
    train, val = (
        None if part is None else _prefetched(
            part[0], directory, part[1], class_names, report,
            _split_fingerprint(part[0], report, part[1], subset, settings))
        for part, subset in zip(parts, ("training", "validation"),
                                strict=True)
    )
    return train, val, class_names


def _listed_files(directory, files):
    """`files` (relative to `directory`) as a set, once all exist."""
    if files is None:
        return None
    missing = [name for name in files
               if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} listed file(s) are missing from '{directory}', "
            f"e.g. {missing[:3]}. Restore them, or pass the files that "
            f"exist. Received: {len(files)} file(s)"
        )
    if not files:
        raise ValueError(
            "No files to read: pass at least one file, or `files=None` for "
            f"all of '{directory}'. Received: files={files!r}"
        )
    return {os.path.normpath(name) for name in files}


def _stratified_parts(report, classes, whole_source, listed, kwargs, *,
                      validation_split, seed, shuffle):
    """`((train, source), (val, source) or None)`: Keras datasets over
    views holding each part's files (`layout.stratified_split`);
    `whole_source` is the usable directory of every good file."""
    good = [name for name in report.good_files
            if listed is None or name in listed]
    if validation_split:
        chosen = layout.stratified_split(good, validation_split, seed)
    else:
        chosen = (good, None)
    parts = []
    for files, part_shuffle in zip(chosen, (shuffle, False), strict=True):
        if files is None:
            parts.append(None)
            continue
        whole = listed is None and not validation_split
        source = whole_source if whole else preflight.usable_directory(
            report, classes, files=files)
        dataset = keras.utils.image_dataset_from_directory(
            source, shuffle=part_shuffle, **kwargs)
        parts.append((dataset, source))
    return tuple(parts)


def _prefetched(dataset, directory, source, class_names, report, fingerprint):
    import tensorflow as tf

    # Keras lists the files it read under `source`; a preflight view keeps
    # the data's class folders and file names, so name them under
    # `directory`, where the user's files are.
    # (A WebP file's view entry is a PNG copy named `<name>.png`.)
    originals = {
        image_files.view_name(name): name for name in report.good_files
    }
    file_paths = []
    for path in dataset.file_paths:
        name = os.path.relpath(path, source)
        file_paths.append(os.path.join(directory, originals.get(name, name)))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    dataset.class_names = class_names
    dataset.transfer_preflight = report
    dataset.transfer_fingerprint = fingerprint
    dataset.file_paths = file_paths
    return dataset


def _fashion_mnist_into_keras_cache():
    """Copies Debian's `dataset-fashion-mnist` files into the Keras cache."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    target = os.path.join(home, "datasets", "fashion-mnist")
    if all(os.path.exists(os.path.join(target, f)) for f in _FASHION_MNIST_FILES):
        return True
    if not all(
        os.path.exists(os.path.join(FASHION_MNIST_DEBIAN_DIR, f))
        for f in _FASHION_MNIST_FILES
    ):
        return False
    os.makedirs(target, exist_ok=True)
    for name in _FASHION_MNIST_FILES:
        source = os.path.join(FASHION_MNIST_DEBIAN_DIR, name)
        with gzip.open(source) as f:  # check it is readable before copying
            f.read(16)
        shutil.copyfile(source, os.path.join(target, name))
    return True


def fashion_mnist_available():
    """Whether Fashion-MNIST loads without a download."""
    return _fashion_mnist_into_keras_cache()


def _subsample(x, y, labels_per_class, seed):
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(y):
        index = np.flatnonzero(y == label)
        if len(index) < labels_per_class:
            raise ValueError(
                f"Class {label} has only {len(index)} training examples. "
                f"Received: labels_per_class={labels_per_class}"
            )
        keep.append(rng.choice(index, labels_per_class, replace=False))
    keep = rng.permutation(np.concatenate(keep))
    return x[keep], y[keep]


def load_dataset(name, *, labels_per_class=None, seed=0):
    """Loads a built-in data set as arrays: `"fashion_mnist"` or `"digits"`.

    `fashion_mnist` uses `keras.datasets.fashion_mnist`, fed from Debian's
    `dataset-fashion-mnist` package when it is installed (no download).
    `digits` is scikit-learn's 8x8 digits, split 75/25 with `seed`.

    Args:
        name: `"fashion_mnist"` or `"digits"`.
        labels_per_class: keep this many training examples per class (a
            seeded, class-balanced sample), or `None` for all.
            Defaults to `None`.
        seed: seed of the sample and split. Defaults to `0`.

    Returns:
        An `ArrayDataset(name, x_train, y_train, x_test, y_test,
        class_names)` with `uint8` images of shape `(n, h, w)`.

    Example:

    >>> data = transfer.load_dataset("digits", labels_per_class=10)
    >>> data.x_train.shape, data.x_test.shape
    ((100, 8, 8), (450, 8, 8))
    >>> data.class_names[:3]
    ['0', '1', '2']
    """
    if name == "fashion_mnist":
        _fashion_mnist_into_keras_cache()
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
        class_names = list(FASHION_MNIST_CLASSES)
    elif name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype("uint8")
        x_train, x_test, y_train, y_test = train_test_split(
            images, digits.target, test_size=0.25, random_state=seed,
            stratify=digits.target,
        )
        class_names = [str(i) for i in range(10)]
    else:
        raise ValueError(
            "Unknown built-in data set. Choose 'fashion_mnist' or 'digits', or "
            f"pass an image folder. Received: name={name!r}"
        )
    if labels_per_class:
        x_train, y_train = _subsample(x_train, y_train, labels_per_class, seed)
    return ArrayDataset(
        name, x_train, y_train.astype("int32"), x_test, y_test.astype("int32"),
        class_names,
    )


def describe_augmentation(layers, seed=None):
    """A short name of augmentation layers for fingerprints, or `None`.

    Example:

    >>> describe_augmentation(default_augmentation(3).layers, 3)
    'RandomFlip, RandomTranslation (seed 3)'
    """
    if not layers:
        return None
    names = ", ".join(type(layer).__name__ for layer in layers)
    return names if seed is None else f"{names} (seed {seed})"


def default_augmentation(seed=None):
    """Light, label-preserving augmentation from `keras.layers`."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed),
        ],
        name="augmentation",
    )


def make_dataset(
    x, y=None, *, image_size, batch_size=32, shuffle=False, augment=None,
    seed=None, interpolation="bilinear",
):
    """A batched `tf.data.Dataset` of RGB `image_size` images in `[0, 255]`.

    Grayscale `(n, h, w)` or `(n, h, w, 1)` arrays become RGB; images are
    resized on the fly (memory stays at the size of the source arrays).
    `augment`, a Keras layer or `None`, runs on training batches only.

    Args:
        x: image array, `(n, h, w)`, `(n, h, w, 1)` or `(n, h, w, 3)`.
        y: integer labels, or `None` for prediction. Defaults to `None`.
        image_size: square output size.
        batch_size: batch size. Defaults to `32`.
        shuffle: shuffle every epoch. Defaults to `False`.
        augment: augmentation layer applied after resizing. Defaults to `None`.
        seed: shuffle seed. Defaults to `None`.
        interpolation: how images are resized, one of
            `transfer.backbones.spec.INTERPOLATIONS` (see
            `load_image_folder`). Defaults to `"bilinear"`.

    Example:

    >>> data = transfer.load_dataset("digits", labels_per_class=10)
    >>> ds = transfer.make_dataset(
    ...     data.x_train, data.y_train, image_size=32, batch_size=16)
    >>> images, labels = next(iter(ds))
    >>> tuple(images.shape), tuple(labels.shape)
    ((16, 32, 32, 3), (16,))
    """
    import tensorflow as tf

    check_interpolation(interpolation)
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            "Images must be shaped (n, h, w), (n, h, w, 1) or (n, h, w, 3). "
            f"Received: shape={x.shape}"
        )
    items = (x,) if y is None else (x, np.asarray(y))
    ds = tf.data.Dataset.from_tensor_slices(items)
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    # Keras preprocessing layers run on TF inside tf.data on every backend;
    # a Sequential wrapper would not, so apply its layers one by one.
    if isinstance(augment, keras.Sequential):
        augment_layers = list(augment.layers)
    elif augment is None:
        augment_layers = []
    else:
        augment_layers = list(augment) if isinstance(augment, (list, tuple)) else [augment]

    def prepare(images, *labels):
        images = tf.cast(images, "float32")
        if images.shape[-1] == 1:
            images = tf.image.grayscale_to_rgb(images)
        if images.shape[1] != image_size or images.shape[2] != image_size:
            images = tf.image.resize(images, (image_size, image_size),
                                     method=interpolation)
        for layer in augment_layers:
            images = layer(images, training=True)
        return (images, *labels) if labels else images

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    ds.transfer_fingerprint = {
        "kind": "arrays", "x": fingerprint.array_fingerprint(x),
        **({} if y is None else {"y": fingerprint.array_fingerprint(y)}),
        "image_size": image_size, "interpolation": interpolation,
        "batch_size": batch_size, "shuffle": shuffle, "seed": seed,
        "augmentation": describe_augmentation(augment_layers, seed),
    }
    return ds


def synthetic_images(num_samples=16, image_size=32, num_classes=2, seed=0):
    """Seeded images whose class is learnable (a bright patch per class).

    Use it to try code, tests and examples without a data set or a
    download.

    Args:
        num_samples: number of images. Defaults to `16`.
        image_size: square size in pixels. Defaults to `32`.
        num_classes: number of classes. Defaults to `2`.
        seed: the random seed. Defaults to `0`.

    Returns:
        `(x, y)`: `float32` images `(n, size, size, 3)` in `[0, 255]` and
        `int32` labels `(n,)`.

    Example:

    >>> x, y = transfer.synthetic_images(8, image_size=32, num_classes=2)
    >>> x.shape, x.dtype.name, y.dtype.name
    ((8, 32, 32, 3), 'float32', 'int32')
    >>> np.bincount(y).tolist()
    [4, 4]
    """
    rng = np.random.default_rng(seed)
    y = np.arange(num_samples) % num_classes
    rng.shuffle(y)
    x = rng.uniform(0, 64, size=(num_samples, image_size, image_size, 3))
    band = max(1, image_size // num_classes)
    for i, label in enumerate(y):
        x[i, label * band : (label + 1) * band, :, label % 3] += 160
    return x.astype("float32"), y.astype("int32")
