"""The images the doctor looks at: where they are, their class and part.

A class-folder root is one pool of files, split as `transfer train` would
split it (`transfer.data.layout.stratified_split`, seeded); a split root
(`train/`, `val/`, `test/`) has its parts as folders. Every file is named
by its path relative to the data root, `/`-separated, as split files list
them.
"""

import dataclasses
import os
from typing import Tuple

from transfer.data import image_files
from transfer.data import layout as layout_lib

# StratifiedKFold's folds: each class needs at least this many images.
FOLDS = 5


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """The image files of a data root.

    Attributes:
        root: the data root.
        names: paths relative to `root`, `/`-separated.
        labels: the class index of each file.
        class_names: the class folder names, sorted.
        split_root: whether `root` holds `train/`, `val/`, `test/` folders.
        parts: the folder part of each file (`"train"`, `"val"`, `"test"`)
            for a split root; `None` for a class-folder root.
    """

    root: str
    names: Tuple[str, ...]
    labels: Tuple[int, ...]
    class_names: Tuple[str, ...]
    split_root: bool
    parts: Tuple[str, ...] = None

    def path(self, index):
        """The file's path on disk."""
        return os.path.join(self.root, *self.names[index].split("/"))


def _folder_files(folder, prefix):
    """`(name, class)` of the images under a class-folder root."""
    found = []
    for name in image_files.list_image_files(folder):
        relative = name.replace(os.sep, "/")
        found.append((prefix + relative, layout_lib.class_of(relative)))
    return found


def list_files(root):
    """The images of `root` with their classes (and parts), checked.

    Raises:
        FileNotFoundError: `root` does not exist.
        ValueError: no images, one class, or a class with fewer than
            `FOLDS` images (cross-validation needs them).
    """
    found_layout = layout_lib.detect_layout(root)
    entries, parts = [], []
    if found_layout.is_split:
        folders = [("train", found_layout.train), ("val", found_layout.val),
                   ("test", found_layout.test)]
        for part, folder in folders:
            if folder is None:
                continue
            prefix = os.path.relpath(folder, root).replace(os.sep, "/") + "/"
            listed = _folder_files(folder, prefix)
            entries.extend(listed)
            parts.extend([part] * len(listed))
    else:
        entries = _folder_files(root, "")
    classes = sorted({label for _, label in entries})
    _check_counts(root, entries, classes)
    index = {name: i for i, name in enumerate(classes)}
    return ImageFiles(
        root=root,
        names=tuple(name for name, _ in entries),
        labels=tuple(index[label] for _, label in entries),
        class_names=tuple(classes),
        split_root=found_layout.is_split,
        parts=tuple(parts) if found_layout.is_split else None,
    )


def _check_counts(root, entries, classes):
    if not entries:
        raise ValueError(
            f"No images ({', '.join(image_files.IMAGE_EXTENSIONS)}) under "
            f"the class folders of '{root}'. Expected <data>/<class>/<image> "
            f"or <data>/train/<class>/<image>. Received: data={root!r}"
        )
    if len(classes) < 2:
        raise ValueError(
            f"'{root}' has one class ({classes}): the doctor finds label "
            "errors by telling classes apart, so it needs at least two "
            "class folders. Add the other classes' folders. "
            f"Received: data={root!r}"
        )
    counts = {name: 0 for name in classes}
    for _, label in entries:
        counts[label] += 1
    few = {name: n for name, n in counts.items() if n < FOLDS}
    if few:
        raise ValueError(
            f"Class(es) {few} of '{root}' have fewer than {FOLDS} images: "
            f"label errors are found by {FOLDS}-fold cross-validation, "
            f"which needs at least {FOLDS} images per class. Add images to "
            "those classes, or leave them out of the folder. "
            f"Received: data={root!r}"
        )


def split_parts(files, readable, validation_split, seed):
    """The part of each file: its folder's, or the split `transfer
    train` would make of a class-folder root's readable files (`None`
    for unreadable ones)."""
    if files.split_root:
        return [part if ok else None
                for part, ok in zip(files.parts, readable, strict=True)]
    names = [name for name, ok in zip(files.names, readable, strict=True)
             if ok]
    if not validation_split:
        held = set()
    else:
        _, val = layout_lib.stratified_split(names, validation_split, seed)
        held = set(val)
    return [None if not ok else ("val" if name in held else "train")
            for name, ok in zip(files.names, readable, strict=True)]
