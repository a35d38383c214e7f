"""A split without leakage: every duplicate group in one part.

For a class-folder root the split starts from the one `transfer train`
would make (seeded, stratified) and moves every group of exact or
near-duplicates that spans both parts into training, so no validation
image has a copy it trained on. A split root's folders cannot move files
between them: validation and test files with a duplicate in an earlier
part (train, then val) are left out of the split instead. Either way the
split lists paths relative to the data root, and `transfer train --data
DIR --split-file split.json` trains on it.
"""

from transfer._io import write_json
from transfer.doctor import duplicates

_ORDER = {"train": 0, "val": 1, "test": 2}


def leak_free_parts(parts, pairs, split_root):
    """`(parts, moved, dropped)`: the part of every file after the fix
    (`None` for files left out), and the files moved to train or left out.

    Example:

    >>> from transfer.doctor.duplicates import Pair
    >>> leak_free_parts(["train", "val", "val"],
    ...                 [Pair(0, 1, "near", 0.99)], split_root=False)
    (['train', 'train', 'val'], [1], [])
    """
    fixed = list(parts)
    by_group = {}
    for i, group in duplicates.groups(len(parts), pairs).items():
        if parts[i] is not None:
            by_group.setdefault(group, []).append(i)
    moved, dropped = [], []
    for members in by_group.values():
        kinds = {parts[i] for i in members}
        if len(kinds) < 2:
            continue
        first = min(kinds, key=_ORDER.get)
        for i in members:
            if parts[i] == first:
                continue
            if split_root:  # folders: the copy cannot move, leave it out
                fixed[i] = None
                dropped.append(i)
            else:
                fixed[i] = "train"
                moved.append(i)
    return fixed, sorted(moved), sorted(dropped)


def write_split(path, files, parts, *, moved, dropped):
    """Writes the split file: `train`, `val` (and `test`) file lists."""
    split = {"data": files.root, "train": [], "val": []}
    if files.split_root:
        split["test"] = []
    for name, part in zip(files.names, parts, strict=True):
        if part is not None:
            split.setdefault(part, []).append(name)
    split["moved_to_train"] = [files.names[i] for i in moved]
    split["left_out"] = [files.names[i] for i in dropped]
    return write_json(path, split)
