"""Where a data root's training, validation and test files are.

Two layouts are understood. A *class-folder root* (`<root>/<class>/<file>`)
is split by `transfer`: seeded and stratified (`stratified_split`). A
*split root*, the ImageNet, fastai and Ultralytics layout, holds its own
split: `<root>/train/<class>/<file>`, a validation folder (`val/`,
`valid/` or `validation/`) and optionally `test/`, each with the same
class folders. `detect_layout` tells them apart and checks a split root
before any file is read. A `train/` folder that holds files and no
subfolders, beside other class folders, is a class named "train".
"""

import dataclasses
import json
import os
from typing import Optional

import numpy as np

TRAIN = "train"
VAL_NAMES = ("val", "valid", "validation")
TEST = "test"
SPLIT_NAMES = (TRAIN, *VAL_NAMES, TEST)
# The seeded split of a class-folder root, as files in the run directory.
SPLIT_FILES = {"train": "split_train.txt", "val": "split_val.txt"}


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """The folders of a data root: where to train, validate and test.

    Each folder is a class-folder root (`<folder>/<class>/<file>`).

    Attributes:
        root: the data root.
        train: the folder to train on: `root` itself, or `root/train`.
        val: the validation folder, or `None`: then `train` is split.
        test: the test folder, or `None`.

    Example:

    >>> layout = DataLayout("pets", "pets/train", "pets/val")
    >>> layout.is_split, DataLayout("pets", "pets").is_split
    (True, False)
    """

    root: str
    train: str
    val: Optional[str] = None
    test: Optional[str] = None

    @property
    def is_split(self):
        """Whether the root holds its own split (`train/`, ...)."""
        return self.train != self.root


def _subfolders(directory):
    return sorted(
        name for name in os.listdir(directory)
        if not name.startswith(".")
        and os.path.isdir(os.path.join(directory, name))
    )


def _has_files(directory):
    for current, folders, names in os.walk(directory):
        folders[:] = [name for name in folders if not name.startswith(".")]
        if current != directory and any(
            not name.startswith(".") for name in names
        ):
            return True
    return False


def _check_same_classes(train, folder, classes):
    """A split folder must hold files, in the class folders of `train`."""
    found = _subfolders(folder)
    if not found or not _has_files(folder):
        raise ValueError(
            f"'{folder}' is empty: a split folder holds one subfolder of "
            f"files per class, like '{train}'. Add the files, or remove the "
            f"folder. Received: folder={folder!r}"
        )
    extra = sorted(set(found) - set(classes))
    missing = sorted(set(classes) - set(found))
    if extra or missing:
        raise ValueError(
            f"The class folders of '{folder}' differ from those of '{train}': "
            f"{extra} only in '{folder}', {missing} only in '{train}'. Every "
            "split needs the same class folders: add the missing ones or "
            f"remove the others. Received: folder={folder!r}"
        )


def _split_root(root, folders):
    train = os.path.join(root, TRAIN)
    classes = _subfolders(train)
    if not classes:
        raise ValueError(
            f"'{train}' holds no class folders. Put the training files in "
            f"'{train}/<class>/<file>'. Received: data={root!r}"
        )
    vals = [name for name in folders if name in VAL_NAMES]
    if len(vals) > 1:
        raise ValueError(
            f"'{root}' has {len(vals)} validation folders {vals}. Keep one "
            f"of {list(VAL_NAMES)}. Received: data={root!r}"
        )
    val = os.path.join(root, vals[0]) if vals else None
    test = os.path.join(root, TEST) if TEST in folders else None
    for folder in (val, test):
        if folder is not None:
            _check_same_classes(train, folder, classes)
    return DataLayout(root, train, val, test)


def detect_layout(root):
    """Which layout a data root has, and the folders of its splits.

    A root with a `train/` folder of class folders is a split root;
    otherwise it is a class-folder root, trained on as a whole (split by
    `stratified_split`). Only folder names are read, so this is cheap.

    Args:
        root: the data root.

    Returns:
        A `DataLayout`.

    Raises:
        FileNotFoundError: `root` does not exist.
        ValueError: a split root that is not one: `train/` beside loose
            class folders, `train/` without class folders, an empty
            split folder, split folders whose class folders differ, two
            validation folders, or `val/` or `test/` without `train/`.

    Example:

    >>> import os
    >>> for split in ("train", "valid"):
    ...     for name in ("cat", "dog"):
    ...         os.makedirs(f"pets/{split}/{name}")
    ...         open(f"pets/{split}/{name}/1.png", "wb").close()
    >>> layout = detect_layout("pets")
    >>> layout.train, layout.val, layout.test, layout.is_split
    ('pets/train', 'pets/valid', None, True)
    >>> detect_layout("pets/train").is_split
    False
    >>> os.makedirs("pets/bird")
    >>> detect_layout("pets")
    Traceback (most recent call last):
        ...
    ValueError: 'pets' mixes layouts: ...
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Data folder '{root}' does not exist. Pass a folder with one "
            "subfolder per class, or with train/ and val/ folders of class "
            f"folders. Received: data={root!r}"
        )
    folders = _subfolders(root)
    loose = [name for name in folders if name not in SPLIT_NAMES]
    if TRAIN not in folders:
        if folders and not loose:
            raise ValueError(
                f"'{root}' has {folders} but no '{TRAIN}/' folder. Add "
                f"'{root}/{TRAIN}/<class>/<file>', or pass a folder with one "
                f"subfolder per class. Received: data={root!r}"
            )
        return DataLayout(root, root)
    if loose and not _subfolders(os.path.join(root, TRAIN)):
        return DataLayout(root, root)  # "train" is a class
    if loose:
        raise ValueError(
            f"'{root}' mixes layouts: a '{TRAIN}/' folder of class folders "
            f"beside loose class folders {loose}. Move them into "
            f"'{TRAIN}/' (or val/, test/), or rename '{TRAIN}/' if it is a "
            f"class. Received: data={root!r}"
        )
    return _split_root(root, folders)


def class_of(name):
    """The class folder of a file path relative to a class-folder root.

    Example:

    >>> class_of("cat/2024/1.png")
    'cat'
    """
    return name.replace(os.sep, "/").split("/", 1)[0]


def stratified_split(files, validation_split, seed):
    """Splits files into training and validation, class by class.

    Each class (the first folder of a file's path) gives
    `round(n * validation_split)` of its `n` files to validation, at least
    one and at most `n - 1`, so every class is in both parts in about the
    same proportion. The choice depends only on the file names and
    `seed`, not on their order.

    Args:
        files: file paths relative to a class-folder root.
        validation_split: the fraction of each class held out, in `(0, 1)`.
        seed: the random seed.

    Returns:
        `(train_files, val_files)`, each sorted.

    Raises:
        ValueError: a class with fewer than two files.

    Example:

    >>> files = [f"cat/{i}.png" for i in range(10)] + ["dog/a.png",
    ...                                                 "dog/b.png"]
    >>> train, val = stratified_split(files, 0.2, seed=0)
    >>> len(train), [class_of(name) for name in val]
    (9, ['cat', 'cat', 'dog'])
    """
    by_class = {}
    for name in sorted(files):
        by_class.setdefault(class_of(name), []).append(name)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, names in sorted(by_class.items()):
        if len(names) < 2:
            raise ValueError(
                f"Class '{label}' has {len(names)} file: a validation split "
                "needs at least two per class. Add files, or set "
                f"validation_split=0. Received: class={label!r}"
            )
        count = int(len(names) * validation_split + 0.5)
        count = min(len(names) - 1, max(1, count))
        held = set(rng.permutation(len(names))[:count].tolist())
        for i, name in enumerate(names):
            (val if i in held else train).append(name)
    return sorted(train), sorted(val)


def format_file_list(files):
    """One file a line, `/`-separated and sorted: a split file's text.

    Example:

    >>> format_file_list(["dog/1.png", "cat/2.png"])
    'cat/2.png\\ndog/1.png\\n'
    """
    return "".join(
        f"{name}\n" for name in sorted(n.replace(os.sep, "/") for n in files)
    )


def parse_file_list(text):
    """The file paths of a split file's text, with this system's separator.

    Example:

    >>> parse_file_list("cat/2.png\\n\\ndog/1.png\\n") == [
    ...     os.path.join("cat", "2.png"), os.path.join("dog", "1.png")]
    True
    """
    return [
        os.path.join(*line.split("/")) for line in text.splitlines()
        if line.strip()
    ]


# The parts a split file (`transfer doctor --fix-split`) may list.
SPLIT_FILE_PARTS = ("train", "val", "test")


def read_split_file(path, layout):
    """The training and validation files a split file lists.

    A split file is a JSON object with `train` and `val` lists of image
    paths relative to the data root (`/`-separated), and optionally
    `test`; `transfer doctor --fix-split` writes one that keeps every group
    of duplicates in one part, and `transfer train --split-file` trains on
    it. For a split root (`train/`, `val/`), the training files must lie in
    its `train/` folder and the validation files in its validation folder.

    Args:
        path: the split file.
        layout: the data root's `DataLayout` (`detect_layout`).

    Returns:
        `(train_files, val_files)`: paths relative to `layout.train` and
        to `layout.val` (or `layout.train` for a class-folder root).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: it is not a JSON object with non-empty `train` and
            `val` lists of strings, or a file lies outside its part's folder.

    Example:

    >>> import json
    >>> with open("split.json", "w") as f:
    ...     json.dump({"train": ["cat/1.png", "dog/2.png"],
    ...                "val": ["cat/3.png"]}, f)
    >>> read_split_file("split.json", DataLayout("pets", "pets"))
    (['cat/1.png', 'dog/2.png'], ['cat/3.png'])
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Split file '{path}' does not exist. Write one with `transfer "
            "doctor --data DIR --fix-split` (doctor/split.json). "
            f"Received: split_file={path!r}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            split = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"Split file '{path}' is not readable JSON ({e}). "
            f"Received: split_file={path!r}"
        ) from None
    parts = {}
    for part in ("train", "val"):
        names = split.get(part) if isinstance(split, dict) else None
        if not names or not isinstance(names, list) or not all(
            isinstance(name, str) and name for name in names
        ):
            raise ValueError(
                f"Split file '{path}' needs a non-empty `{part}` list of "
                "image paths relative to the data root, as `transfer doctor "
                f"--fix-split` writes. Received: {part}={names!r}"
            )
        folder = layout.train if part == "train" or layout.val is None \
            else layout.val
        inside = os.path.relpath(folder, layout.root)
        prefix = "" if inside == "." else inside.replace(os.sep, "/") + "/"
        outside = [name for name in names if not name.startswith(prefix)]
        if outside:
            raise ValueError(
                f"Split file '{path}' lists {part} files outside "
                f"'{folder}', e.g. {outside[:3]}: for this data root the "
                f"{part} files are paths under '{prefix or './'}'. Write the "
                "split again with `transfer doctor --fix-split` on this "
                f"folder. Received: data={layout.root!r}"
            )
        parts[part] = [os.path.join(*name[len(prefix):].split("/"))
                       for name in names]
    return parts["train"], parts["val"]
