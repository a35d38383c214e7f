"""Fingerprints of training data: what a resumed run checks has not changed.

A fingerprint is a small JSON-ready dict that `fit_recipe` stores when a run
starts (`run_dir/checkpoints/fingerprint.json`) and compares on resume:

- a folder (`load_image_folder`) or CSV (`load_image_csv`): the files of
  the split with their size and modification time, the image size and
  interpolation, seed, validation split and augmentation
  (`kind: "image_folder"`/`"image_csv"`);
- arrays, as `(x, y)` or through `make_dataset`: shapes, dtypes and a
  sha256 of the values (`kind: "arrays"`), with `make_dataset`'s image
  size and interpolation;
- any other dataset: its type only (`checked: False`), since its contents
  cannot be read without iterating it.

The loaders attach theirs to the datasets they return
(`dataset.transfer_fingerprint`); `data_fingerprint` reads it, or makes one
for arrays. `differences` lists what changed, in words.
"""

import contextlib
import hashlib
import os
import threading

import numpy as np

_SKIPPED_KEYS = ("kind", "subset", "files", "x", "y", "checked")
# Settings recorded later than others: a stored fingerprint without one
# was made with this value (images were resized bilinearly before
# `interpolation` was recorded), so it still resumes.
_RECORDED_LATER = {"interpolation": "bilinear"}
_EXAMPLES = 3
# Arrays at least this large are hashed once inside `shared_digests`.
_SHARED_MIN_BYTES = 1 << 20
_shared = threading.local()


@contextlib.contextmanager
def shared_digests():
    """Within the block, each large array's bytes are hashed once.

    `fit_recipe` hashes its training arrays for the run's fingerprint and
    again for the feature cache's key (`transfer.training.feature_store`):
    196 MB of images took 0.26 s each time. Inside this block
    `bytes_sha256` remembers the digest of every numeric array of at least
    1 MiB by identity (holding a reference, so the identity stays its
    own); the caller promises not to change those arrays inside the block.
    Blocks nest; the outermost one forgets the digests.
    """
    outer = getattr(_shared, "digests", None)
    if outer is None:
        _shared.digests = {}
    try:
        yield
    finally:
        if outer is None:
            _shared.digests = None


def bytes_sha256(array):
    """sha256 (32 bytes) of a numeric array's values in C order.

    Example:

    >>> import hashlib
    >>> array = np.arange(6, dtype="int32").reshape(2, 3)
    >>> bytes_sha256(array) == hashlib.sha256(array.tobytes()).digest()
    True
    """
    memo = getattr(_shared, "digests", None)
    shared = (memo is not None and isinstance(array, np.ndarray)
              and array.nbytes >= _SHARED_MIN_BYTES)
    if shared and id(array) in memo:
        return memo[id(array)][1]
    values = np.ascontiguousarray(array)
    # A view of the bytes, not `tobytes()`: no copy of a large array.
    digest = hashlib.sha256(values.reshape(-1).view(np.uint8)).digest()
    if shared:
        memo[id(array)] = (array, digest)
    return digest


def file_stats(path):
    """`[size, mtime_ns]` of a file, as fingerprints store it."""
    stat = os.stat(path)
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def portable_name(name):
    """A relative path with `/` separators, as fingerprints store names."""
    return name.replace(os.sep, "/")


def array_fingerprint(array):
    """`{"shape", "dtype", "sha256"}` of an array (or a list of strings).

    Example:

    >>> array_fingerprint(np.zeros((2, 3), "uint8"))["shape"]
    [2, 3]
    """
    array = np.asarray(array)
    if array.dtype.kind in "OUS":
        digest = hashlib.sha256()
        for item in array.reshape(-1):
            value = item if isinstance(item, bytes) else str(item).encode()
            digest.update(len(value).to_bytes(8, "little") + value)
        sha256 = digest.hexdigest()
    else:
        sha256 = bytes_sha256(array).hex()
    return {"shape": [int(n) for n in array.shape], "dtype": str(array.dtype),
            "sha256": sha256}


def _is_array(value):
    if isinstance(value, tuple):  # sentence pairs: (first, second) texts
        return len(value) == 2 and all(_is_array(part) for part in value)
    return isinstance(value, (np.ndarray, list)) or hasattr(value, "__array__")


def data_fingerprint(data):
    """The fingerprint of one `fit_recipe` input, or `None` for `None`.

    Example:

    >>> x, y = transfer.synthetic_images(4, 32, 2)
    >>> data_fingerprint((x, y))["kind"]
    'arrays'
    """
    if data is None:
        return None
    attached = getattr(data, "transfer_fingerprint", None)
    if attached is not None:
        return dict(attached)
    if isinstance(data, tuple) and 1 <= len(data) <= 3 and all(
        _is_array(part) for part in data
    ):
        x = data[0]
        fingerprint = {"kind": "arrays", "x": (
            [array_fingerprint(part) for part in x]  # sentence pairs
            if isinstance(x, tuple) else array_fingerprint(x))}
        if len(data) > 1:
            fingerprint["y"] = array_fingerprint(data[1])
        return fingerprint
    return {"kind": "dataset", "type": type(data).__name__, "checked": False}


def _show(value):
    return "None" if value is None else repr(value) if isinstance(
        value, str) else str(value)


def _plural(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _folder(name):
    head, _, rest = name.partition("/")
    return f"{head}/" if rest else "./"


def _table(fingerprints):
    """`{name: (stats, subset)}` over the subsets' file lists."""
    table = {}
    for subset, fingerprint in fingerprints.items():
        for name, stats in ((fingerprint or {}).get("files") or {}).items():
            table[name] = (list(stats), subset)
    return table


def _file_differences(old, new):
    before, after = _table(old), _table(new)
    if not before and not after:
        return []
    found = []
    for label, names in (
        ("removed from", sorted(set(before) - set(after))),
        ("added to", sorted(set(after) - set(before))),
        ("changed (size or modification time) in", sorted(
            n for n in set(before) & set(after) if before[n][0] != after[n][0]
        )),
    ):
        by_folder = {}
        for name in names:
            by_folder.setdefault(_folder(name), []).append(name)
        for folder, members in sorted(by_folder.items()):
            examples = ", ".join(repr(n) for n in members[:_EXAMPLES])
            more = ", ..." if len(members) > _EXAMPLES else ""
            found.append(
                f"{_plural(len(members), 'file')} {label} '{folder}' "
                f"(e.g. {examples}{more})"
            )
    moved = sorted(
        n for n in set(before) & set(after) if before[n][1] != after[n][1]
    )
    if moved:
        found.append(
            f"{_plural(len(moved), 'file')} moved between the training and "
            "validation splits"
        )
    return found


def _array_differences(subset, key, old, new):
    if old == new:
        return []
    if old is None or new is None:
        return [f"{subset} {key} {_show(old)} -> {_show(new)}"]
    for part in ("shape", "dtype"):
        if old.get(part) != new.get(part):
            return [f"{subset} {key} {part} {old.get(part)} -> {new.get(part)}"]
    return [
        f"{subset} {key} holds other values (sha256 {old['sha256'][:12]} -> "
        f"{new['sha256'][:12]})"
    ]


def differences(old, new):
    """What changed between two `{subset: fingerprint}` mappings, in words.

    Args:
        old: the stored mapping, e.g. `{"training": ..., "validation": ...}`.
        new: the current one.

    Returns:
        A list of strings such as `"image_size 32 -> 40"` or `"10 files
        removed from 'a/' (e.g. 'a/1.png', ...)"`; empty when nothing did.

    Example:

    >>> differences({"training": {"kind": "image_folder", "seed": 1}},
    ...             {"training": {"kind": "image_folder", "seed": 5}})
    ['seed 1 -> 5']
    """
    found = []
    for subset in sorted(set(old) | set(new)):
        before, after = old.get(subset), new.get(subset)
        if before == after:
            continue
        if before is None or after is None:
            found.append(
                f"{subset} data {'none' if before is None else 'given'} -> "
                f"{'none' if after is None else 'given'}"
            )
            continue
        if before.get("kind") != after.get("kind"):
            found.append(
                f"{subset} data {before.get('kind')} -> {after.get('kind')}")
            continue
        for key in sorted((set(before) | set(after)) - set(_SKIPPED_KEYS)):
            default = _RECORDED_LATER.get(key)
            was, now = before.get(key, default), after.get(key, default)
            if was != now:
                found.append(f"{key} {_show(was)} -> {_show(now)}")
        for key in ("x", "y"):
            found += _array_differences(
                subset, key, before.get(key), after.get(key))
    found += _file_differences(old, new)
    return list(dict.fromkeys(found))  # settings shared by subsets: once
