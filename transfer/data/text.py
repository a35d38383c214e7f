"""Text data: class folders of `.txt` files, CSV files, lists, built-ins.

Every loader validates before any model is built: empty texts, undecodable
files, unknown labels and too few classes are reported with the file, row or
index and the fix.
"""

import collections
import csv
import logging
import os
import re

import numpy as np

logger = logging.getLogger(__name__)

FORTUNES_DIR = "/usr/share/games/fortunes"
FORTUNES_CATEGORIES = ("computers", "food", "science", "sports")

TextDataset = collections.namedtuple(
    "TextDataset", ["name", "x_train", "y_train", "x_test", "y_test", "class_names"]
)


def check_texts(texts, where="texts"):
    """Raises `ValueError` listing empty or non-string texts."""
    bad = [
        i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()
    ]
    if bad:
        raise ValueError(
            f"{len(bad)} of the {where} are empty or not strings (first at "
            f"index {bad[:5]}). Remove them or fill them in. "
            f"Received: {[texts[i] for i in bad[:3]]!r}"
        )
    return list(texts)


def _decode(path, errors):
    raw = open(path, "rb").read()
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError as e:
        if errors != "replace":
            raise ValueError(
                f"'{path}' is not valid UTF-8 ({e.reason} at byte {e.start}). "
                "Re-encode it as UTF-8, or pass errors='replace' to decode "
                "with replacement characters."
            ) from e
        return raw.decode("utf-8", errors="replace"), True


def load_text_folder(directory, *, validation_split=0.2, seed=1337, errors="strict"):
    """Reads `<directory>/<class>/*.txt`, like `text_dataset_from_directory`.

    Args:
        directory: root folder; class names are its subfolder names.
        validation_split: fraction held out (stratified, seeded), or `0`.
            Defaults to `0.2`.
        seed: seed of the split. Defaults to `1337`.
        errors: `"strict"` fails on a file that is not UTF-8, naming it;
            `"replace"` decodes with replacement characters and logs a
            warning with the count. Defaults to `"strict"`.

    Returns:
        `((x_train, y_train), (x_val, y_val) or None, class_names)` with
        lists of strings and `int32` label arrays.

    Example:

    >>> import os
    >>> reviews = {"neg": ["dull", "too long", "a boring plot"],
    ...            "pos": ["great fun", "loved it", "superb cast"]}
    >>> for label, texts in reviews.items():
    ...     os.makedirs(f"reviews/{label}")
    ...     for i, text in enumerate(texts):
    ...         with open(f"reviews/{label}/{i}.txt", "w") as f:
    ...             _ = f.write(text)
    >>> (x, y), val, names = transfer.text.load_text_folder(
    ...     "reviews", validation_split=0)
    >>> names, x[:2], y.tolist()
    (['neg', 'pos'], ['dull', 'too long'], [0, 0, 0, 1, 1, 1])
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Text folder '{directory}' does not exist. Pass a directory with "
            f"one subfolder of .txt files per class. Received: {directory!r}"
        )
    class_names = sorted(
        d for d in os.listdir(directory)
        if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")
    )
    texts, labels, replaced, empty_files = [], [], 0, []
    for label, name in enumerate(class_names):
        folder = os.path.join(directory, name)
        files = sorted(f for f in os.listdir(folder) if f.endswith(".txt"))
        if not files:
            raise ValueError(
                f"Class folder '{folder}' holds no .txt files; add some or "
                "remove the folder."
            )
        for file_name in files:
            path = os.path.join(folder, file_name)
            text, was_replaced = _decode(path, errors)
            replaced += was_replaced
            if not text.strip():
                empty_files.append(path)
                continue
            texts.append(text)
            labels.append(label)
    if empty_files:
        raise ValueError(
            f"{len(empty_files)} text file(s) are empty, e.g. "
            f"'{empty_files[0]}'. Remove them or fill them in."
        )
    if replaced:
        logger.warning(
            "%d file(s) in '%s' were not valid UTF-8 and were decoded with "
            "replacement characters.", replaced, directory,
        )
    if len(class_names) < 2:
        raise ValueError(
            f"'{directory}' has {len(class_names)} class folder(s); "
            "classification needs at least two."
        )
    labels = np.asarray(labels, dtype="int32")
    if not validation_split:
        return (texts, labels), None, class_names
    train, val = split_texts(texts, labels, validation_split, seed)
    return train, val, class_names


def split_texts(texts, labels, fraction, seed):
    """`((train_texts, train_labels), (held_texts, held_labels))`: a
    stratified, seeded split holding out `fraction` of every class.

    `texts` may be sentence pairs `(first_texts, second_texts)`: both parts
    are split alike, and come back as pairs.
    """
    from sklearn.model_selection import train_test_split  # heavy: on use

    pairs = isinstance(texts, tuple)
    parts = list(texts) if pairs else [texts]
    split = train_test_split(
        *parts, labels, test_size=fraction, random_state=seed, stratify=labels
    )
    train = [list(p) for p in split[0:-2:2]]
    held = [list(p) for p in split[1:-2:2]]
    y_train, y_val = np.asarray(split[-2]), np.asarray(split[-1])
    if pairs:
        return (tuple(train), y_train), (tuple(held), y_val)
    return (train[0], y_train), (held[0], y_val)


def load_text_csv(
    path, *, text_column="text", label_column="label", class_names=None,
    text_pair_column=None,
):
    """Reads a CSV with a text column and a label column.

    Labels are class names (or integers as text). With `class_names`, a label
    outside it is an error listing the rows; without it, the sorted distinct
    labels become the classes. With `text_pair_column`, every row is a
    sentence pair (premise and hypothesis, say) for a classifier built with
    `text_pairs=True`.

    Args:
        path: the CSV file, with a header row.
        text_column: the column of texts (of first texts, for pairs).
            Defaults to `"text"`.
        label_column: the column of labels. Defaults to `"label"`;
            `None` reads no labels (texts to predict).
        class_names: the classes, in order, or `None` for the sorted
            distinct labels. Defaults to `None`.
        text_pair_column: the column of second texts, or `None` for single
            texts. Defaults to `None`.

    Returns:
        `(texts, labels, class_names)`; `texts` is a list of strings, or a
        tuple `(first_texts, second_texts)` with `text_pair_column`;
        `labels` is `None` without a label column.

    Example:

    >>> import csv
    >>> rows = [["text", "label"], ["great fun", "pos"], ["dull", "neg"],
    ...         ["loved it", "pos"]]
    >>> with open("reviews.csv", "w", newline="") as f:
    ...     csv.writer(f).writerows(rows)
    >>> texts, labels, names = transfer.text.load_text_csv("reviews.csv")
    >>> texts, labels.tolist(), names
    (['great fun', 'dull', 'loved it'], [1, 0, 1], ['neg', 'pos'])
    >>> # Sentence pairs: two text columns.
    >>> rows = [["premise", "hypothesis", "label"],
    ...         ["a cat sleeps", "an animal rests", "entailment"],
    ...         ["a cat sleeps", "a dog barks", "neutral"]]
    >>> with open("pairs.csv", "w", newline="") as f:
    ...     csv.writer(f).writerows(rows)
    >>> (first, second), labels, names = transfer.text.load_text_csv(
    ...     "pairs.csv", text_column="premise",
    ...     text_pair_column="hypothesis")
    >>> second, labels.tolist(), names
    (['an animal rests', 'a dog barks'], [0, 1], ['entailment', 'neutral'])
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"CSV file '{path}' does not exist.")
    roles = {"text_column": text_column, "text_pair_column": text_pair_column,
             "label_column": label_column}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = {k: c for k, c in roles.items()
                   if c is not None and c not in columns}
        if missing:
            flags = ", ".join(f"{k}={c!r}" for k, c in missing.items())
            raise ValueError(
                f"'{path}' has no column(s) {list(missing.values())}; its "
                f"columns are {columns}. Pass the right column names "
                f"(--text-column, --text-pair-column, --label-column on the "
                f"command line). Received: {flags}"
            )
        rows = list(reader)
    text_columns = [c for c in (text_column, text_pair_column) if c]
    parts = []
    for column in text_columns:
        texts = [row[column] or "" for row in rows]
        empty = [i + 2 for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise ValueError(
                f"'{path}': empty text in row(s) {empty[:10]} of column "
                f"{column!r} (row 1 is the header). Remove or fill them."
            )
        parts.append(texts)
    texts = tuple(parts) if text_pair_column else parts[0]
    if label_column is None:
        return texts, None, list(class_names) if class_names else None
    raw_labels = [(row[label_column] or "").strip() for row in rows]
    if class_names is None:
        class_names = sorted(set(raw_labels))
    index = {str(name): i for i, name in enumerate(class_names)}
    unknown = [(i + 2, lab) for i, lab in enumerate(raw_labels) if lab not in index]
    if unknown:
        raise ValueError(
            f"'{path}': label(s) not among the classes {list(class_names)} in "
            f"row(s) {[r for r, _ in unknown[:10]]} (values "
            f"{sorted({v for _, v in unknown})[:10]}). Fix the labels or pass "
            "the full class_names."
        )
    if len(class_names) < 2:
        raise ValueError(
            f"'{path}' has {len(class_names)} distinct label(s); "
            "classification needs at least two."
        )
    labels = np.asarray([index[lab] for lab in raw_labels], dtype="int32")
    return texts, labels, list(class_names)


def read_fortunes(category):
    """The entries of one Debian `fortunes` file (`FORTUNES_DIR/category`)."""
    path = os.path.join(FORTUNES_DIR, category)
    with open(path, encoding="utf-8", errors="replace") as f:
        entries = f.read().split("\n%\n")
    texts = []
    for entry in entries:
        # Drop attribution lines ("-- Author"): they would leak the class.
        lines = [ln for ln in entry.splitlines() if not re.match(r"\s*--\s", ln)]
        text = " ".join(" ".join(lines).split())
        if len(text) > 20:
            texts.append(text)
    return texts


def fortunes_available():
    return all(
        os.path.exists(os.path.join(FORTUNES_DIR, c)) for c in FORTUNES_CATEGORIES
    )


def load_text_dataset(name="auto", *, per_class=140, test_fraction=0.3, seed=0):
    """A small built-in text classification set that works offline.

    `"fortunes"`: quotations from Debian's `fortunes` package (the
    inoffensive set) in four categories: computers, food, science, sports;
    `per_class` sampled from each, attribution lines removed. `"jokes"`:
    pyjokes' `neutral` programmer jokes against its `chuck` (Chuck Norris)
    jokes. `"auto"` takes fortunes when installed, else jokes.

    Returns:
        A `TextDataset(name, x_train, y_train, x_test, y_test, class_names)`
        with a stratified, seeded split.

    Example:

    >>> data = transfer.text.load_text_dataset("jokes", per_class=20)
    >>> data.class_names, len(data.x_train), len(data.x_test)
    (['neutral', 'chuck'], 28, 12)
    """
    if name == "auto":
        name = "fortunes" if fortunes_available() else "jokes"
    rng = np.random.default_rng(seed)
    if name == "fortunes":
        if not fortunes_available():
            raise FileNotFoundError(
                f"Debian's fortunes are not installed under {FORTUNES_DIR}. "
                "Install them with `apt-get install fortunes`, or use "
                "name='jokes'."
            )
        class_names = list(FORTUNES_CATEGORIES)
        groups = [read_fortunes(c) for c in class_names]
    elif name == "jokes":
        try:
            import pyjokes
        except ImportError as e:
            raise ImportError("The jokes data set needs `pip install pyjokes`.") from e
        class_names = ["neutral", "chuck"]
        groups = [pyjokes.get_jokes("en", c) for c in class_names]
    else:
        raise ValueError(
            "Unknown built-in text data set. Choose 'fortunes', 'jokes' or "
            f"'auto'. Received: name={name!r}"
        )
    texts, labels = [], []
    for label, group in enumerate(groups):
        group = sorted(set(group))
        chosen = rng.permutation(len(group))[: per_class or len(group)]
        texts += [group[i] for i in chosen]
        labels += [label] * len(chosen)
    (x_train, y_train), (x_test, y_test) = split_texts(
        texts, np.asarray(labels, dtype="int32"), test_fraction, seed
    )
    return TextDataset(name, x_train, y_train, x_test, y_test, class_names)
