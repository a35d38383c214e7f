"""Preflight: decode every image once before training, and remember it.

A run that dies at 90% on one bad JPEG wastes hours. `check_images` opens
and fully decodes every image with Pillow before training starts, showing
a `keras.utils.Progbar`, and finds the files that would fail or mislead:

- empty (zero-byte), truncated, and non-image files (a text file named
  `.jpg`): reported, or left out with `skip_bad_files=True`;
- images over `max_image_pixels` (decompression bombs): refused from their
  header, before any pixel is decoded, so memory stays bounded;
- grayscale, RGBA, palette, CMYK and 16-bit images: counted. Those the
  TensorFlow decoder would get wrong (CMYK, 16-bit, modes and formats it
  has no decoder for) are converted to 8-bit RGB PNG copies in the cache;
  the decoder turns the others into RGB itself.

Hidden files (names starting with `.`, macOS's `._*` resource forks
included) and hidden folders are skipped and counted (`hidden`). One list
of extensions (`transfer.data.image_files.IMAGE_EXTENSIONS`) decides what
training, evaluation and prediction read; WebP, which
`keras.utils.image_dataset_from_directory` does not list, is read through
an 8-bit RGB copy made with Pillow, the way `image_files.read_image` reads
every file for prediction.

Results are cached as JSON in the user cache directory
(`transfer.weights.cache.cache_dir("preflight")`), keyed by each file's
relative path, size and modification time, so a later run on the same data
decodes only new or changed files.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Dict
from typing import Tuple

import keras

from transfer._io import atomic_write
from transfer.data.image_files import IMAGE_EXTENSIONS  # noqa: F401 (kept public here)
from transfer.data.image_files import MAX_IMAGE_PIXELS
from transfer.data.image_files import bit_depth
from transfer.data.image_files import bomb_reason
from transfer.data.image_files import image_files
from transfer.data.image_files import list_image_files  # noqa: F401 (kept public here)
from transfer.data.image_files import pillow_limits
from transfer.data.image_files import to_rgb
from transfer.data.image_files import view_name
from transfer.weights.cache import cache_dir

logger = logging.getLogger(__name__)

# Formats `tf.io.decode_image` decodes (MPO is a multi-picture JPEG).
_DECODER_FORMATS = ("BMP", "GIF", "JPEG", "MPO", "PNG")
_CACHE_VERSION = 1
_MAX_LISTED = 20
# Bad files named in a report's repr.
_MAX_REPR = 3


@dataclasses.dataclass(frozen=True, repr=False)
class PreflightReport:
    """What `check_images` found under `directory`.

    Attributes:
        directory: the data root; files are relative to it.
        files: the relative paths checked, in order.
        bad: `(file, reason)` pairs of files that cannot be used.
        converted: counts of images that are not plain 8-bit RGB, by kind:
            `grayscale`, `rgba` (alpha dropped), `palette`, `cmyk`,
            `16-bit` and `other` (modes or formats with no TF decoder).
        copies: `{file: path}` of the 8-bit RGB copies made in the cache.
        cache_hits: files answered from the cache without decoding.
        skip_bad_files: whether bad files are left out rather than an error.
        stats: `{file: [size, mtime_ns]}`, as `transfer.data.fingerprint`
            stores them.
        hidden: hidden files skipped (`.name`, `._name`, hidden folders).
    """

    directory: str
    files: Tuple[str, ...]
    bad: Tuple[Tuple[str, str], ...]
    converted: Dict[str, int]
    copies: Dict[str, str]
    cache_hits: int
    skip_bad_files: bool = False
    stats: Dict[str, list] = dataclasses.field(default_factory=dict)
    hidden: int = 0

    def __repr__(self):
        """Counts and the first bad files, not every file name.

        Example:

        >>> PreflightReport("/data", ("a/1.png", "a/2.png", "b/3.png"),
        ...                 (("b/3.png", "empty file (0 bytes)"),), {}, {}, 0)
        PreflightReport(directory='/data', files=3, bad=1 (b/3.png: empty \
file (0 bytes)), converted={}, copies=0, cache_hits=0, skip_bad_files=False, \
hidden=0)
        """
        bad = str(len(self.bad))
        if self.bad:
            named = "; ".join(f"{name}: {reason}"
                              for name, reason in self.bad[:_MAX_REPR])
            more = len(self.bad) - _MAX_REPR
            bad += f" ({named}" + (f"; and {more} more)" if more > 0 else ")")
        return (
            f"PreflightReport(directory={self.directory!r}, "
            f"files={len(self.files)}, bad={bad}, "
            f"converted={dict(self.converted)}, copies={len(self.copies)}, "
            f"cache_hits={self.cache_hits}, "
            f"skip_bad_files={self.skip_bad_files}, hidden={self.hidden})"
        )

    @property
    def good_files(self):
        bad = {name for name, _ in self.bad}
        return [name for name in self.files if name not in bad]

    def path_for(self, name):
        """The path to read for `name`: its RGB copy, or the file itself."""
        return self.copies.get(name) or os.path.join(self.directory, name)

    def to_dict(self):
        """A JSON-ready summary, as the manifest records it."""
        return {
            "directory": self.directory,
            "files": len(self.files),
            "bad": len(self.bad),
            "bad_files": [{"file": f, "reason": r} for f, r in self.bad],
            "skipped": len(self.bad) if self.skip_bad_files else 0,
            "converted": dict(self.converted),
            "copies": len(self.copies),
            "cache_hits": self.cache_hits,
            "hidden_skipped": self.hidden,
        }

    def raise_for_bad_files(self, describe=None):
        """Raises `ValueError` listing the bad files, unless skipping them.

        Args:
            describe: a function of a file name giving its label in the
                message (for example with a CSV row number). Defaults to the
                name itself.
        """
        if not self.bad or self.skip_bad_files:
            return
        describe = describe or (lambda name: name)
        lines = [f"  {describe(f)}: {r}" for f, r in self.bad[:_MAX_LISTED]]
        if len(self.bad) > _MAX_LISTED:
            lines.append(f"  ... and {len(self.bad) - _MAX_LISTED} more")
        raise ValueError(
            f"{len(self.bad)} of {len(self.files)} image file(s) under "
            f"'{self.directory}' cannot be used:\n" + "\n".join(lines) + "\n"
            "Remove or replace them, or pass skip_bad_files=True to leave "
            "them out (the manifest then lists them). "
            f"Received: {len(self.bad)} bad file(s)"
        )


def _kind(image, bits):
    """The conversion kind of an image, or `None` for plain 8-bit RGB."""
    mode = image.mode
    if bits > 8 and mode not in ("1", "P"):
        return "16-bit"
    if mode == "CMYK":
        return "cmyk"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in image.info
    ):
        return "rgba"
    if mode in ("1", "L"):
        return "grayscale"
    if mode == "P":
        return "palette"
    if image.format not in _DECODER_FORMATS or mode != "RGB":
        return "other"
    return None


def _needs_copy(image, bits, kind):
    """Whether `tf.io.decode_image(channels=3)` would get it wrong."""
    return (
        image.format not in _DECODER_FORMATS
        or kind in ("16-bit", "cmyk", "other")
        or (image.format == "BMP" and image.mode not in ("RGB", "L", "P"))
    )


def _examine(path, key, max_image_pixels, copy_dir):
    """Decodes one file; returns its cache entry."""
    from PIL import Image
    from PIL import UnidentifiedImageError

    entry = dict(key, reason=None, kind=None, copy=None)
    if key["size"] == 0:
        return dict(entry, reason="empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_image_pixels:
                return dict(entry, reason=bomb_reason(
                    f"{width}x{height} = {width * height:,} pixels, over "
                    f"max_image_pixels={max_image_pixels:,}"
                ))
            bits = bit_depth(path, image)
            image.load()  # every pixel: truncation shows here
            kind = _kind(image, bits)
            entry.update(kind=kind, format=image.format, mode=image.mode)
            if kind is not None and _needs_copy(image, bits, kind):
                digest = hashlib.sha256(
                    f"{path}|{key['size']}|{key['mtime_ns']}".encode()
                ).hexdigest()[:24]
                copy = os.path.join(copy_dir, f"{digest}.png")
                rgb = to_rgb(image, bits)
                atomic_write(copy, lambda f: rgb.save(f, format="PNG"))
                entry["copy"] = copy
    except Image.DecompressionBombError as e:
        return dict(entry, reason=bomb_reason(str(e)))
    except UnidentifiedImageError:
        return dict(entry, reason="not an image (Pillow cannot identify it)")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        text = str(e)
        if "truncated" in text.lower():
            return dict(entry, reason=f"truncated ({text})")
        return dict(entry, reason=f"cannot be decoded ({type(e).__name__}: {text})")
    return entry


def _cache_path(directory):
    digest = hashlib.sha256(directory.encode("utf-8")).hexdigest()[:16]
    return os.path.join(cache_dir("preflight"), f"{digest}.json"), digest


def _load_cache(path, directory, max_image_pixels):
    try:
        with open(path, encoding="utf-8") as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(cache, dict)
        or cache.get("version") != _CACHE_VERSION
        or cache.get("directory") != directory
        or cache.get("max_image_pixels") != max_image_pixels
    ):
        return {}
    return cache.get("files") or {}


def check_images(
    directory,
    files=None,
    *,
    skip_bad_files=False,
    max_image_pixels=MAX_IMAGE_PIXELS,
    verbose=1,
):
    """Decodes every image once and reports bad and converted files.

    Run it before training, as `load_image_folder` and `load_image_csv`
    do. Results are cached by path, size and modification time, so a later
    run on unchanged data is fast.

    Args:
        directory: the data root.
        files: paths relative to `directory`, or `None` for every image in
            its class folders (`list_image_files`). Defaults to `None`.
        skip_bad_files: leave bad files out instead of raising (the report
            and the manifest list them). Defaults to `False`.
        max_image_pixels: images with more pixels are refused from their
            header, unread. Defaults to `89_478_485`, Pillow's default.
        verbose: `1` shows a `keras.utils.Progbar`, `0` nothing.
            Defaults to `1`.

    Returns:
        A `PreflightReport`. Call its `raise_for_bad_files()` to fail on bad
        files unless `skip_bad_files`.

    Example:

    >>> import os
    >>> x, y = transfer.synthetic_images(4, 32, 2)
    >>> for i, (image, label) in enumerate(zip(x, y)):
    ...     os.makedirs(f"shapes/{label}", exist_ok=True)
    ...     keras.utils.save_img(f"shapes/{label}/{i}.png", image)
    >>> keras.utils.save_img("shapes/0/gray.png", x[0, :, :, :1])
    >>> open("shapes/1/empty.png", "w").close()
    >>> report = transfer.data.preflight.check_images("shapes", verbose=0)
    >>> len(report.files), report.converted
    (6, {'grayscale': 1})
    >>> report.bad
    (('1/empty.png', 'empty file (0 bytes)'),)
    """
    if isinstance(max_image_pixels, bool) or not isinstance(
        max_image_pixels, int
    ) or max_image_pixels < 1:
        raise ValueError(
            "`max_image_pixels` must be a positive integer. "
            f"Received: max_image_pixels={max_image_pixels!r}"
        )
    directory = os.path.realpath(directory)
    hidden = 0
    if files is None:
        files, hidden = image_files(directory)
    else:
        files = list(files)
    cache_path, digest = _cache_path(directory)
    cached = _load_cache(cache_path, directory, max_image_pixels)
    copy_dir = cache_dir("preflight", digest, "converted")
    entries, todo, stats = {}, [], {}
    for name in files:
        path = os.path.join(directory, name)
        try:
            stat = os.stat(path)
            key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        except OSError as e:
            entries[name] = {"reason": f"cannot be read ({e.strerror})"}
            continue
        stats[name] = [int(stat.st_size), int(stat.st_mtime_ns)]
        hit = cached.get(name)
        if (
            hit is not None
            and {k: hit.get(k) for k in key} == key
            and (hit.get("copy") is None or os.path.exists(hit["copy"]))
        ):
            entries[name] = hit
        else:
            todo.append((name, path, key))
    hits = len(files) - len(todo)
    progress = keras.utils.Progbar(len(files), verbose=verbose, unit_name="file")
    progress.update(hits)
    if todo:
        workers = max(1, min(8, os.cpu_count() or 1))
        with pillow_limits(max_image_pixels), \
                concurrent.futures.ThreadPoolExecutor(workers) as pool:
            jobs = pool.map(
                lambda job: _examine(job[1], job[2], max_image_pixels, copy_dir),
                todo,
            )
            for done, ((name, _, _), entry) in enumerate(zip(todo, jobs, strict=True), 1):
                entries[name] = entry
                progress.update(hits + done)
        cached.update({n: entries[n] for n, _, _ in todo})
        data = {"version": _CACHE_VERSION, "directory": directory,
                "max_image_pixels": max_image_pixels, "files": cached}
        atomic_write(cache_path, lambda f: json.dump(data, f), mode="w")
    converted = {}
    for name in files:
        kind = entries[name].get("kind")
        if kind is not None and not entries[name].get("reason"):
            converted[kind] = converted.get(kind, 0) + 1
    report = PreflightReport(
        directory=directory,
        files=tuple(files),
        bad=tuple(
            (name, entries[name]["reason"]) for name in files
            if entries[name].get("reason")
        ),
        converted=converted,
        copies={
            name: entries[name]["copy"] for name in files
            if entries[name].get("copy") and not entries[name].get("reason")
        },
        cache_hits=hits,
        skip_bad_files=skip_bad_files,
        stats=stats,
        hidden=hidden,
    )
    if hidden:
        logger.info(
            "Skipped %d hidden image file(s) under '%s' (names starting with "
            "'.', such as macOS '._' files).", hidden, directory,
        )
    if report.bad:
        logger.warning(
            "%d bad image file(s) under '%s'%s", len(report.bad), directory,
            ", left out (skip_bad_files=True)" if skip_bad_files else "",
        )
    if converted:
        logger.info("Images converted to RGB, by kind: %s", converted)
    return report


def _link(source, target):
    try:
        os.symlink(source, target)
    except OSError:
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)


def usable_directory(report, class_folders, files=None):
    """A directory Keras can read with the report's bad files left out.

    The data directory itself when nothing is skipped, copied or left
    out; otherwise a view in the cache with the same class folders and
    file names (so Keras's order and seeded split are unchanged), linking
    each good file or its RGB copy. Views are content-addressed and built
    atomically.

    Args:
        report: a `PreflightReport` of a class-folder directory.
        class_folders: the class folder names, in order.
        files: only these good files (names relative to the directory, as
            in `report.files`), or `None` for all. Defaults to `None`.

    Returns:
        A directory path.

    Raises:
        ValueError: bad files and not `skip_bad_files`, or a class left
            with no usable image.
    """
    report.raise_for_bad_files()
    good = report.good_files
    counts = {name: 0 for name in class_folders}
    for name in good:
        counts[name.split(os.sep, 1)[0]] += 1
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise ValueError(
            f"Class folder(s) {empty} in '{report.directory}' have no usable "
            f"images once the {len(report.bad)} bad file(s) are left out. Add "
            "images or remove the folder(s). Received: "
            f"{ {name: counts[name] for name in empty} }"
        )
    if files is not None:
        chosen = set(files)
        good = [name for name in good if name in chosen]
    whole = files is None or len(good) == len(report.good_files)
    if whole and not report.bad and not report.copies and not report.hidden:
        return report.directory
    links = [(view_name(name), report.path_for(name)) for name in good]
    digest = hashlib.sha256(
        json.dumps([class_folders, links]).encode("utf-8")
    ).hexdigest()[:16]
    _, root_digest = _cache_path(report.directory)
    views = cache_dir("preflight", root_digest, "views")
    view = os.path.join(views, digest)
    if os.path.exists(os.path.join(view, ".complete")):
        return view
    building = tempfile.mkdtemp(prefix=".building-", dir=views)
    for name in class_folders:
        os.makedirs(os.path.join(building, name), exist_ok=True)
    for name, source in links:
        target = os.path.join(building, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _link(os.path.abspath(source), target)
    open(os.path.join(building, ".complete"), "w").close()
    try:
        os.rename(building, view)
    except OSError:  # another process built the same view first
        shutil.rmtree(building, ignore_errors=True)
    return view
