"""What an image file is to `transfer`: which extensions, which names are
hidden, and the one conversion to RGB.

`IMAGE_EXTENSIONS` is the one list training (`load_image_folder`),
evaluation and prediction (`transfer.prediction.predict_files`) accept.
Hidden files (names starting with `.`, macOS `._*` resource forks
included) and hidden folders are skipped. `to_rgb` converts what
TensorFlow's decoder would get wrong (16-bit values scaled, not clipped;
CMYK; formats it has no decoder for) the way the preflight's 8-bit copies
are made, and `read_image`, the prediction path, reads every file so.
"""

import contextlib
import os
import warnings

import numpy as np

from transfer.backbones.spec import check_interpolation

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
# What `keras.utils.image_dataset_from_directory` reads; in the cache's view
# of a folder, other image files (WebP) are linked as `<name>.png` copies.
KERAS_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
# Pillow's own default: 89.5 million pixels, about 268 MB as 8-bit RGB.
MAX_IMAGE_PIXELS = 89_478_485


def is_hidden(name):
    """Whether a file or folder name is hidden (`.name`, macOS `._name`)."""
    return name.startswith(".")


def visible_files(folder):
    """The files under `folder`, hidden folders left out (not sorted).

    What `transfer.workflow.detect_modality` counts and
    `transfer.prediction.expand_files` reads; hidden files themselves are
    kept, for the caller to count or skip with `is_hidden`.
    """
    for root, folders, names in os.walk(folder):
        folders[:] = [d for d in folders if not is_hidden(d)]
        yield from (os.path.join(root, name) for name in names)


def image_files(directory):
    """`(files, hidden)`: the image files under `directory`'s class folders.

    `files` are the paths, relative to `directory`, of files with an
    extension in `IMAGE_EXTENSIONS` anywhere under the class folders (the
    subfolders not starting with "."), in Keras's order; `hidden` counts
    the image files skipped because they or a folder above them are hidden.
    """
    files, hidden = [], 0
    for folder in sorted(os.listdir(directory)):
        root = os.path.join(directory, folder)
        if is_hidden(folder) or not os.path.isdir(root):
            continue
        for current, _, names in sorted(os.walk(root), key=lambda w: w[0]):
            inside = os.path.relpath(current, root)
            hidden_folder = inside != "." and any(
                is_hidden(part) for part in inside.split(os.sep))
            for name in sorted(names):
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                if hidden_folder or is_hidden(name):
                    hidden += 1
                    continue
                path = os.path.join(current, name)
                files.append(os.path.relpath(path, directory))
    return files, hidden


def list_image_files(directory):
    """The image files `image_files` finds (hidden ones skipped).

    Files with an extension in `IMAGE_EXTENSIONS` anywhere under the class
    folders (the subfolders not starting with "."), relative to
    `directory`, in Keras's order.
    """
    return image_files(directory)[0]



def bit_depth(path, image):
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return 16 if image.mode.startswith("I;16") else 32
    if image.format == "PNG":
        if hasattr(path, "read"):  # an open file or BytesIO
            position = path.tell()
            path.seek(0)
            header = path.read(25)
            path.seek(position)
        else:
            with open(path, "rb") as f:
                header = f.read(25)
        if len(header) == 25 and header[12:16] == b"IHDR":
            return header[24]
    return 8



def to_rgb(image, bits):
    from PIL import Image

    if image.mode.startswith("I") or image.mode == "F":
        # Pillow's own convert("L") clips 16-bit values at 255; scale them.
        array = np.asarray(image)
        if bits == 16 or array.max(initial=0) > 255:
            array = array.astype("float64") / 257.0  # 65535 -> 255
        array = np.clip(np.round(array), 0, 255).astype("uint8")
        return Image.fromarray(array).convert("RGB")
    return image.convert("RGB")


@contextlib.contextmanager
def pillow_limits(max_image_pixels):
    """Pillow set to refuse bombs and truncated files, restored after."""
    from PIL import Image
    from PIL import ImageFile

    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    # Pillow raises past twice this limit while reading the header; past the
    # limit itself it only warns, and `_examine` refuses the file right after
    # reading the header.
    Image.MAX_IMAGE_PIXELS = max_image_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def bomb_reason(detail):
    return (
        f"decompression bomb? {detail}; refused from its header, not decoded"
    )



def read_image(path, image_size=None, *, interpolation="bilinear",
               max_image_pixels=MAX_IMAGE_PIXELS):
    """One image file as training sees it: RGB `float32` in `[0, 255]`.

    The prediction path. Decoded with Pillow and converted as the preflight
    converts the files TensorFlow's decoder would get wrong (16-bit values
    scaled, not clipped; CMYK, palette, grayscale and RGBA to RGB), then
    resized with `tf.image.resize(..., method=interpolation)`, as
    `keras.utils.image_dataset_from_directory` resizes training images
    (cubic and Lanczos methods may overshoot `[0, 255]` a little, there
    as here).

    Args:
        path: an image file, or an open binary file (`io.BytesIO` of an
            upload's bytes).
        image_size: square size to resize to, or `None` to keep the size.
            Defaults to `None`.
        interpolation: the resize method, one of
            `transfer.backbones.spec.INTERPOLATIONS` (a run's model records
            the one it was trained with). Defaults to `"bilinear"`.
        max_image_pixels: larger images are refused from their header.
            Defaults to `89_478_485`, Pillow's default.

    Returns:
        A `(height, width, 3)` `float32` array.

    Raises:
        ValueError: the file is not an image, is truncated, or too large;
            or `interpolation` is not one of `INTERPOLATIONS`.

    Example:

    >>> from PIL import Image
    >>> Image.fromarray(np.zeros((8, 8), "uint16")).save("gray16.png")
    >>> read_image("gray16.png", 4).shape
    (4, 4, 3)
    >>> import io  # bytes in memory (an upload) read the same
    >>> with open("gray16.png", "rb") as f:
    ...     in_memory = read_image(io.BytesIO(f.read()), 4)
    >>> bool(np.array_equal(in_memory, read_image("gray16.png", 4)))
    True
    """
    from PIL import Image

    check_interpolation(interpolation)
    with pillow_limits(max_image_pixels):
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_image_pixels:
                    raise ValueError(bomb_reason(
                        f"{width}x{height} pixels, over max_image_pixels="
                        f"{max_image_pixels:,}"))
                bits = bit_depth(path, image)
                image.load()
                array = np.asarray(to_rgb(image, bits), dtype="uint8")
        except Image.UnidentifiedImageError:
            # Pillow's message names its BytesIO object, not the file.
            raise ValueError("not an image Pillow can identify") from None
        except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            raise ValueError(
                f"cannot be decoded ({type(e).__name__}: {e})") from None
    same = array.shape[:2] == (image_size, image_size)
    # At the same size these two give the pixels back; Keras resizes
    # anyway, and the other methods (Mitchell-cubic, Gaussian) smooth.
    if image_size is None or (same and interpolation in ("bilinear",
                                                         "nearest")):
        return array.astype("float32")
    import tensorflow as tf  # optional heavy dependency: tf.data's resize

    resized = tf.image.resize(array, (image_size, image_size),
                              method=interpolation)
    return np.asarray(resized, dtype="float32")



def view_name(name):
    """The name a file has in `usable_directory`'s view: the same, with
    `.png` added when Keras would not read its extension (WebP, whose view
    entry is an 8-bit RGB PNG copy)."""
    if name.lower().endswith(KERAS_EXTENSIONS):
        return name
    return name + ".png"
