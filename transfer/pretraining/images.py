"""Self-supervised image pretraining: SimCLR or MAE on unlabelled images.

`pretrain_images` trains any registered image backbone (from random init,
or continuing from its pretrained weights) with `transfer.pretraining.contrastive`'s SimCLR
objective, or a vision transformer with masked image modelling
(`transfer.pretraining.masked_images`, MAE), as one `fit_recipe` stage:
TensorBoard logs, progress bars, per-epoch backups and resume come from
there. A k-NN probe on a small
labelled holdout (`transfer.pretraining.probes.RepresentationProbe`) logs how good the
features are after every epoch. The trained backbone is saved as `run_dir/backbone.keras`;
pass that path to `build_classifier` to fine-tune it.
"""

import logging
import os
import time

import keras
import numpy as np

from transfer.backbones.resolve import get_backbone_spec
from transfer.data.images import load_dataset
from transfer.models.classifier import build_backbone
from transfer.pretraining import masked_images
from transfer.pretraining.contrastive import ContrastivePretrainer
from transfer.pretraining.probes import RepresentationProbe
from transfer.pretraining.reconstructions import ReconstructionLogger
from transfer.saving import save_model
from transfer.training import run_dir as run_dir_lib
from transfer.training.fit import fit_recipe
from transfer.training.recipe import Stage

logger = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.keras"
METHODS = ("simclr", "mae")
# Images whose reconstructions TensorBoard shows every epoch (MAE).
_SHOWN_IMAGES = 8


def default_augmentation(image_size, seed=None):
    """SimCLR-style views for small images, all from `keras.layers`.

    Random crops (zoom in by up to 40% and shift by up to 15%), horizontal
    flips, and contrast and brightness jitter; each layer keeps the batch
    shape, so it runs inside the model on every backend.

    Args:
        image_size: the square image size (kept by every layer).
        seed: seed of the layers' random draws. Defaults to `None`.

    Returns:
        A list of `keras.layers.Layer`.
    """
    del image_size  # Every layer keeps the input size; kept for symmetry.
    return [
        keras.layers.RandomZoom((-0.4, 0.0), fill_mode="reflect", seed=seed),
        keras.layers.RandomTranslation(0.15, 0.15, fill_mode="reflect",
                                       seed=seed),
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomContrast(0.4, seed=seed),
        keras.layers.RandomBrightness(0.3, value_range=(0, 255), seed=seed),
    ]


def check_augmentation(augmentation, image_size):
    """Runs every augmentation layer once and checks it keeps the shape.

    Returns:
        The layers as a list (a `keras.Sequential` is unpacked).

    Raises:
        TypeError: an item is not a `keras.layers.Layer`.
        ValueError: a layer changes the shape of a batch of images.
    """
    if isinstance(augmentation, keras.Sequential):
        augmentation = list(augmentation.layers)
    elif isinstance(augmentation, keras.layers.Layer):
        augmentation = [augmentation]
    layers = list(augmentation)
    expected = (2, image_size, image_size, 3)
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).uniform(0, 255, expected).astype("float32")
    )
    for layer in layers:
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "`augmentation` must be a list of keras.layers.Layer. "
                f"Received: an item of type {type(layer).__name__}"
            )
        shape = tuple(keras.ops.shape(layer(x, training=True)))
        if shape != expected:
            raise ValueError(
                f"Augmentation layer '{layer.name}' turns images of shape "
                f"{expected} into {shape}: both views must keep the batch "
                "shape. Resize or crop back to the image size (for example "
                f"keras.layers.RandomCrop({image_size}, {image_size}) after "
                "a larger Resizing), or drop the layer. "
                f"Received: {layer.__class__.__name__}"
            )
    return layers


def image_array(images, image_size=None, *, min_image_size=1):
    """Unlabelled images as an `(n, size, size, 3)` array in `[0, 255]`.

    Args:
        images: an array `(n, h, w)`, `(n, h, w, 1)` or `(n, h, w, 3)`; an
            `(x, y)` tuple (labels are dropped); the name of a built-in data
            set (`"fashion_mnist"`, `"digits"`: its training images); or an
            image folder (every image below it, labels ignored).
        image_size: square output size; `None` keeps the arrays' size.
            Defaults to `None`.
        min_image_size: smallest size accepted. Defaults to `1`.

    Raises:
        ValueError: an unknown source, a bad shape, or images smaller than
            `min_image_size`.
    """
    if isinstance(images, tuple) and len(images) == 2:
        images = images[0]
    if isinstance(images, str) and os.path.isdir(images):
        if image_size is None:
            raise ValueError(
                f"Pass image_size to read the folder '{images}'. "
                "Received: image_size=None"
            )
        ds = keras.utils.image_dataset_from_directory(
            images, labels=None, image_size=(image_size, image_size),
            batch_size=256, shuffle=False, verbose=False,
        )
        images = np.concatenate([np.asarray(b) for b in ds.as_numpy_iterator()])
    elif isinstance(images, str):
        images = load_dataset(images).x_train
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        raise ValueError(
            "Unlabelled images must be a non-empty array shaped (n, h, w), "
            "(n, h, w, 1) or (n, h, w, 3). "
            f"Received: shape={getattr(x, 'shape', None)}"
        )
    size = image_size if image_size is not None else x.shape[1]
    if image_size is None and x.shape[1] != x.shape[2]:
        raise ValueError(
            f"The images are {x.shape[1]}x{x.shape[2]}: pass a square "
            f"image_size to resize them. Received: image_size=None"
        )
    if size < min_image_size:
        raise ValueError(
            f"The images would be {size}x{size} pixels, but the backbone "
            f"needs at least {min_image_size}. Pass "
            f"image_size={min_image_size} (or more) to upsample them. "
            f"Received: image_size={image_size!r}"
        )
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[1:3] == (size, size):
        return x
    dtype = x.dtype
    chunks = []
    for start in range(0, len(x), 4096):  # bounded memory
        chunk = keras.ops.image.resize(
            x[start : start + 4096].astype("float32"), (size, size)
        )
        chunks.append(keras.ops.convert_to_numpy(chunk))
    out = np.concatenate(chunks)
    if dtype == np.uint8:
        out = np.clip(np.round(out), 0, 255).astype("uint8")
    return out


def _check_not_finished(run_dir):
    """Refuses a finished run, naming its backbone file (which is restored
    from `model.keras` if a kill came between the two saves)."""
    path = os.path.join(run_dir, BACKBONE_FILE)
    if not run_dir_lib.is_finished(run_dir):
        return
    model_path = run_dir_lib.path(run_dir, run_dir_lib.MODEL)
    if not os.path.exists(path) and os.path.exists(model_path):
        save_model(keras.saving.load_model(model_path).backbone, path)
    raise ValueError(
        f"'{run_dir}' holds a finished pretraining run; its backbone is "
        f"'{path}': pass that path to transfer.build_classifier. Pass a new "
        f"run_dir to pretrain again. Received: run_dir={run_dir!r}"
    )


def _check_batch(num_images, batch_size, method):
    what = (
        "SimCLR needs at least one full batch of images to contrast"
        if method == "simclr" else "MAE needs at least one full batch"
    )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
            or batch_size < 2:
        raise ValueError(
            "`batch_size` must be an integer of at least 2 (SimCLR contrasts "
            f"the images of a batch). Received: batch_size={batch_size!r}"
        )
    if num_images < batch_size:
        raise ValueError(
            f"Only {num_images} unlabelled images for batch_size="
            f"{batch_size}: {what}. Add images or lower batch_size. "
            f"Received: {num_images} images, batch_size={batch_size}"
        )


def pretrain_images(
    images,
    *,
    run_dir,
    backbone="small_cnn",
    weights=None,
    image_size=None,
    epochs=10,
    batch_size=256,
    learning_rate=1e-3,
    holdout=None,
    augmentation=None,
    method="simclr",
    mask_ratio=0.75,
):
    """Pretrains an image backbone with SimCLR or MAE on unlabelled images.

    `method="simclr"`: one `fit_recipe` stage named `simclr` (all blocks and
    BatchNorm train, cosine-decayed Adam) into `run_dir`; TensorBoard shows
    the NT-Xent `loss` and the pretext `accuracy`. `method="mae"` (vision
    transformers only): masked image modelling, one stage named `mae`
    (cosine-decayed AdamW, weight decay 0.05) in which the encoder sees a
    random `1 - mask_ratio` of each image's patches and a light decoder
    reconstructs the normalised pixels of the others; TensorBoard shows the
    reconstruction `loss` (on hidden patches only) and, in `reconstructions`,
    original, masked and reconstructed images of a fixed set (the holdout's
    first 8, else the first 8 images) after every epoch. Either way, with a
    `holdout`, the k-NN probe accuracy (`probe/epoch_knn_accuracy`). A
    killed run resumes from its last finished epoch when the same call is
    repeated. The backbone is saved as `run_dir/backbone.keras`, which
    `build_classifier` takes as a backbone like a registered name. Inputs
    are checked before training.

    Args:
        images: unlabelled images: an array (`(n, h, w)`, `(n, h, w, 1)` or
            `(n, h, w, 3)`, pixels in `[0, 255]`), an `(x, y)` tuple whose
            labels are dropped, a built-in data set name, or a folder.
        run_dir: run directory (logs, checkpoints, manifest, backbone).
        backbone: any image backbone `build_classifier` accepts.
            Defaults to `"small_cnn"`.
        weights: `None` to start from random init, or the backbone's
            pretrained weights (`"imagenet"`) for domain-adaptive
            pretraining. Defaults to `None`.
        image_size: square training size. Defaults to `None`: the images'
            size (arrays) or the backbone's (folders).
        epochs: pretraining epochs. Defaults to `10`.
        batch_size: images per batch; SimCLR contrasts each view with the
            `2 * batch_size - 2` others. Defaults to `256`.
        learning_rate: peak Adam learning rate. Defaults to `1e-3`.
        holdout: `(images, labels)` for the k-NN probe, or `None`.
            Defaults to `None`.
        augmentation: list of `keras.layers` making the views (SimCLR) or
            applied before masking (MAE); each must keep the image shape.
            Defaults to `None`: `default_augmentation` (SimCLR), a
            horizontal flip (MAE).
        method: `"simclr"` (any backbone) or `"mae"` (a vision transformer:
            `small_vit`, `vit`, `deit`, `dinov2`, `clip` or their presets).
            Defaults to `"simclr"`.
        mask_ratio: share of each image's patches hidden from the encoder
            (MAE), in `(0, 1)`. Defaults to `0.75`.

    Returns:
        A dict: `backbone` (the saved `.keras` path), `model` (the
        `ContrastivePretrainer` or `MaskedImagePretrainer`), `probe`
        (`(epoch, k-NN accuracy)` pairs of this call, or `[]`), `history`
        (the stage's `History`), `seconds`.

    Raises:
        ValueError: an unknown method, fewer images than `batch_size`,
            images smaller than the backbone's minimum, an augmentation that
            changes the shape; for MAE a backbone without patch tokens, a
            `mask_ratio` outside `(0, 1)`, an image size that is not a
            multiple of the patch size.

    Example:

    >>> x, _ = transfer.synthetic_images(8, 32)  # labels unused
    >>> # Inputs are checked before anything is built or written:
    >>> transfer.pretrain_images(x, run_dir="runs/ssl", batch_size=16)
    Traceback (most recent call last):
        ...
    ValueError: Only 8 unlabelled images for batch_size=16: SimCLR needs at
    least one full batch of images to contrast. ...
    >>> transfer.pretrain_images(x, run_dir="runs/mae", method="mae")
    Traceback (most recent call last):
        ...
    ValueError: Masked image pretraining (method='mae') needs a vision
    transformer, ...

    A run, then a classifier on the pretrained backbone (not run as a
    doctest: tracing the SimCLR training step alone takes TensorFlow 10 to
    30 seconds on a CPU):

    ```python
    result = transfer.pretrain_images(
        x, run_dir="runs/ssl", backbone="small_cnn", epochs=1, batch_size=8)
    result["backbone"]  # 'runs/ssl/backbone.keras'
    model = transfer.build_classifier(result["backbone"], num_classes=2)
    ```
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise ValueError(
            f"`method` must be one of {METHODS}: 'simclr' (contrastive, any "
            "backbone) or 'mae' (masked image modelling, vision "
            f"transformers). Received: method={method!r}"
        )
    _check_not_finished(run_dir)
    spec = get_backbone_spec(backbone)
    if method == "mae":
        masked_images.check_spec(spec)
        masked_images.check_mask_ratio(mask_ratio)
    x = image_array(images, image_size, min_image_size=spec.min_image_size)
    size = x.shape[1]
    if method == "mae":
        masked_images.check_patch_grid(spec, size)
    _check_batch(len(x), batch_size, method)
    if augmentation is None:
        augmentation = (
            default_augmentation(size) if method == "simclr"
            else [keras.layers.RandomFlip("horizontal")]
        )
    layers = check_augmentation(augmentation, size)
    probe_data = None
    if holdout is not None:
        if not (isinstance(holdout, tuple) and len(holdout) == 2):
            raise ValueError(
                "`holdout` is an (images, labels) tuple. "
                f"Received: {type(holdout).__name__}"
            )
        probe_data = (image_array(holdout[0], size),
                      np.asarray(holdout[1]).astype("int64"))
        if len(probe_data[0]) != len(probe_data[1]):
            raise ValueError(
                f"holdout images and labels differ in length: "
                f"{len(probe_data[0])} images, {len(probe_data[1])} labels."
            )
    # Drop the last partial batch: a batch of 1 has nothing to contrast
    # (and equal batches keep one traced step).
    x = x[: len(x) - len(x) % batch_size]
    backbone_model, spec, info = build_backbone(
        spec, weights=weights, image_size=size
    )
    if method == "mae":
        masked_images.split_backbone(backbone_model, spec.blocks)
        model = masked_images.MaskedImagePretrainer(
            backbone_model, size, spec.patch_size,
            num_prefix_tokens=info.get("prefix_tokens", 0),
            mask_ratio=mask_ratio, augmentation=layers, scale=spec.scale,
            offset=spec.offset, name=f"{spec.name}_mae",
        )
    else:
        model = ContrastivePretrainer(
            backbone_model, layers, scale=spec.scale, offset=spec.offset,
            num_prefix_tokens=info.get("prefix_tokens", 0),
            name=f"{spec.name}_simclr",
        )
    model(x[:2])  # build every layer before fit_recipe counts the weights
    model.transfer_metadata = {
        "backbone": spec.name,
        "backbone_source": spec.source,
        "image_size": size,
        "task": method,
        "weights": info,
        "unlabelled_images": int(len(x)),
    }
    logs = os.path.join(run_dir, "logs")
    callbacks = []
    if probe_data is not None:
        probe = RepresentationProbe(probe_data, logs)
        callbacks.append(probe)
    if method == "mae":
        shown = probe_data[0] if probe_data is not None else x
        callbacks.append(ReconstructionLogger(shown[:_SHOWN_IMAGES], logs))
        stage = Stage("mae", epochs, learning_rate, trainable_blocks="all",
                      train_batchnorm=True, schedule="cosine",
                      optimizer="adamw", weight_decay=0.05, monitor="loss")
    else:
        stage = Stage("simclr", epochs, learning_rate,
                      trainable_blocks="all", train_batchnorm=True,
                      schedule="cosine")
    histories = fit_recipe(
        model, [stage], x, run_dir=run_dir, batch_size=batch_size,
        callbacks=callbacks,
    )
    path = os.path.join(run_dir, BACKBONE_FILE)
    save_model(model.backbone, path)
    logger.info("Saved the pretrained backbone to %s", path)
    return {
        "backbone": path,
        "model": model,
        "probe": probe.history if probe_data is not None else [],
        "history": histories[0],
        "seconds": round(time.perf_counter() - started, 2),
    }

