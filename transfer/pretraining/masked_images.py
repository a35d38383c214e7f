"""`MaskedImagePretrainer`: masked-autoencoder (MAE) pretraining of a ViT.

A plain `keras.Model` subclass (no custom training loop), as
`transfer.pretraining.contrastive.ContrastivePretrainer`: `call` cuts each
image into the backbone's patches and hides a random `mask_ratio` of them
(a fresh draw per image and step). The backbone's embedding (patches,
class token, positions) runs on the whole image; its encoder layers and
final norm then run on the visible patch tokens only, with the class or
register tokens. A light decoder (a linear projection, a learned mask token
in place of every hidden patch, learned positions, `decoder_layers` small
transformer layers) predicts the pixels of every patch, normalised per
patch, and `compute_loss` is their mean squared error over the hidden
patches only (He et al., 2022, "Masked Autoencoders Are Scalable Vision
Learners"). Keras ops only: the same code trains on TensorFlow, JAX and
torch.

The backbone is a vision transformer whose direct layers form one chain
(embedding, encoder layers, final norm): `small_vit` and the `vit` family
(trained in the tests), the `deit`, `dinov2` and `clip` families (masked
forward pass tested, no training run). DINOv3's rotary positions and SigLIP's attention-pooling
head do not fit; `split_backbone` says so.
"""

import json
import re

import keras
import numpy as np
from keras import ops

from transfer.backbones import hub
from transfer.backbones.blocks import assign_blocks
from transfer.backbones.blocks import infer_blocks

# Added to the per-patch pixel variance before its square root (pixels in
# [0, 1]): a flat patch (a black background) gets a target of zeros.
_EPSILON = 1e-6


def check_mask_ratio(mask_ratio):
    """Raises `ValueError` unless `mask_ratio` is a number in `(0, 1)`."""
    if (
        isinstance(mask_ratio, bool)
        or not isinstance(mask_ratio, (int, float))
        or not 0 < mask_ratio < 1
    ):
        raise ValueError(
            "`mask_ratio` is the share of patches hidden from the encoder: "
            "a number strictly between 0 and 1 (MAE uses 0.75). "
            f"Received: mask_ratio={mask_ratio!r}"
        )


def check_patch_grid(spec, image_size):
    """Raises `ValueError` unless `image_size` is a multiple of the patch
    size, with at least two patches."""
    patch = spec.patch_size
    if image_size % patch or image_size // patch < 2:
        raise ValueError(
            f"Backbone '{spec.name}' cuts images in {patch}-pixel patches: "
            f"masked pretraining needs an image size that is a multiple of "
            f"{patch} and at least {2 * patch} (for example "
            f"image_size={max(2, round(image_size / patch)) * patch}). "
            f"Received: image_size={image_size!r}"
        )


def check_spec(spec):
    """Refuses a backbone without patch tokens before anything is built."""
    if not spec.patch_size:
        raise ValueError(
            f"Masked image pretraining (method='mae') needs a vision "
            f"transformer, whose output has one token per image patch; "
            f"backbone '{spec.name}' has no patches (a CNN's feature map). "
            "Pretrain it with method='simclr', or pretrain a vision "
            "transformer ('small_vit', 'vit', 'deit', 'dinov2', 'clip' or "
            f"their presets) with MAE. Received: backbone={spec.name!r}"
        )


def split_backbone(backbone, blocks=()):
    """The backbone's embedding layers and the layers after them.

    Args:
        backbone: a functional vision transformer.
        blocks: its block regexes (embedding first); `()` infers them.

    Returns:
        `(embedding_layers, encoder_layers)`, each a list in call order; the
        encoder layers end with the final norm.

    Raises:
        ValueError: the layers do not form one chain, or the output is not
            a token sequence.
    """
    chain = _chain(backbone)
    if chain is None or len(backbone.output_shape) != 3:
        raise ValueError(
            f"Masked image pretraining runs the encoder layers of backbone "
            f"'{backbone.name}' on the visible patches only, so its layers "
            "must form one chain (embedding, encoder layers, final norm) "
            "ending in a token sequence (batch, tokens, width). This one "
            f"outputs {backbone.output_shape} through other connections "
            "(DINOv3's rotary positions, SigLIP's attention pooling). Use "
            "method='simclr', or a 'small_vit', 'vit', 'deit', 'dinov2' or "
            f"'clip' backbone. Received: backbone={backbone.name!r}"
        )
    stem = {id(layer) for layer, index in assign_blocks(
        backbone, blocks or infer_blocks(backbone)) if index == 0}
    split = next((i for i, layer in enumerate(chain)
                  if id(layer) not in stem), len(chain))
    return chain[:split], chain[split:]


def _chain(backbone):
    """The layers of a functional model whose every layer takes the output
    of the one before (read from its config: the graph as saved), or
    `None`."""
    try:
        config = backbone.get_config()
        entries = config["layers"]
    except (AttributeError, KeyError, NotImplementedError, TypeError):
        return None
    chain, previous = [], None
    for entry in entries:
        sources = re.findall(r'"keras_history": \["([^"]+)"',
                             json.dumps(entry.get("inbound_nodes", [])))
        if previous is None and not sources:  # the input layer
            previous = entry["name"]
            continue
        if len(entry.get("inbound_nodes", [])) != 1 or sources != [previous]:
            return None
        chain.append(backbone.get_layer(entry["name"]))
        previous = entry["name"]
    outputs = re.findall(r'"([^"]+)"', json.dumps(config.get("output_layers")))
    return chain if chain and outputs[:1] == [previous] else None


def patchify(images, patch_size):
    """`(batch, h, w, c)` images to `(batch, patches, p * p * c)`, patches
    row by row (the order of a ViT's patch tokens)."""
    height, width, channels = images.shape[1:]
    rows, columns = height // patch_size, width // patch_size
    x = ops.reshape(
        images, (-1, rows, patch_size, columns, patch_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(
        x, (-1, rows * columns, patch_size * patch_size * channels))


def unpatchify(patches, patch_size, channels=3):
    """The inverse of `patchify`, in NumPy: `(batch, h, w, c)` images."""
    patches = np.asarray(patches)
    batch, count, _ = patches.shape
    side = int(round(count**0.5))
    x = patches.reshape(batch, side, side, patch_size, patch_size, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, side * patch_size, side * patch_size, channels)


def normalized_patches(images, patch_size):
    """Pixels in `[0, 1]` of every patch, normalised to zero mean and unit
    variance per patch: the reconstruction targets.

    Returns:
        `(targets, mean, std)`, the last two shaped `(batch, patches, 1)`.
    """
    patches = patchify(ops.cast(images, "float32") / 255.0, patch_size)
    mean = ops.mean(patches, axis=-1, keepdims=True)
    std = ops.sqrt(ops.var(patches, axis=-1, keepdims=True) + _EPSILON)
    return (patches - mean) / std, mean, std


@keras.saving.register_keras_serializable(package="transfer")
class MaskedImagePretrainer(keras.Model):
    """MAE pretraining of a vision transformer: mask patches, reconstruct.

    Fit it on unlabelled images (RGB, pixels in `[0, 255]`) with
    `model.fit(x)` after `model.compile(optimizer)`, or through
    `transfer.fit_recipe` (what `transfer.pretrain_images(...,
    method="mae")` does). The logs show `loss`: the mean squared error of
    the normalised pixels of the hidden patches. `model.backbone` is the
    trained backbone, ready for `build_classifier` once saved;
    `model.features` gives its mean patch token on whole images (for the
    probes), and `model.reconstruct` the images TensorBoard shows.

    Args:
        backbone: a vision transformer `keras.Model` (images to tokens)
            whose layers form one chain, named after its registry key.
        image_size: the square image size.
        patch_size: the backbone's patch size; divides `image_size`.
        num_prefix_tokens: class and register tokens before the patch
            tokens. Defaults to `1`.
        mask_ratio: share of the patches hidden from the encoder.
            Defaults to `0.75`.
        augmentation: a list of `keras.layers` applied to the images in
            training (each keeps the shape). Defaults to `()`.
        scale: preprocessing multiplier, as `BackboneSpec.scale`.
            Defaults to `1.0`.
        offset: preprocessing offset, as `BackboneSpec.offset`.
            Defaults to `0.0`.
        decoder_dim: width of the decoder. Defaults to `64`.
        decoder_layers: transformer layers of the decoder. Defaults to `1`.
        decoder_heads: attention heads of each decoder layer.
            Defaults to `4`.
        seed: seed of the mask draws. Defaults to `None`.

    Example:

    >>> backbone, spec, info = transfer.build_backbone(
    ...     "small_vit", weights=None, image_size=32)
    >>> model = transfer.pretraining.masked_images.MaskedImagePretrainer(
    ...     backbone, image_size=32, patch_size=spec.patch_size,
    ...     num_prefix_tokens=info["prefix_tokens"], scale=spec.scale,
    ...     offset=spec.offset)
    >>> x, _ = transfer.synthetic_images(4, 32)
    >>> outputs = model(x, training=True)
    >>> tuple(outputs["pixels"].shape)  # 64 patches of 4 x 4 x 3 pixels
    (4, 64, 48)
    >>> int(keras.ops.sum(outputs["mask"][0]))  # 75% of them hidden
    48
    >>> tuple(model.features(x).shape)  # mean patch token
    (4, 64)
    """

    def __init__(self, backbone, image_size, patch_size, num_prefix_tokens=1,
                 mask_ratio=0.75, augmentation=(), scale=1.0, offset=0.0,
                 decoder_dim=64, decoder_layers=1, decoder_heads=4,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        check_mask_ratio(mask_ratio)
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.mask_ratio = float(mask_ratio)
        self.augmentation = list(augmentation)
        self.scale = scale
        self.offset = offset
        self.decoder_dim = int(decoder_dim)
        self.decoder_layers = int(decoder_layers)
        self.decoder_heads = int(decoder_heads)
        self.seed = seed
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_visible = min(self.num_patches - 1, max(
            1, int(round(self.num_patches * (1 - self.mask_ratio)))))
        self.preprocessing = keras.layers.Rescaling(
            scale, offset, name="preprocessing")
        self.backbone = backbone
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.decoder_embed = keras.layers.Dense(
            self.decoder_dim, name="decoder_embed")
        self.decoder_blocks = [
            _decoder_block(self.decoder_dim, self.decoder_heads, i)
            for i in range(self.decoder_layers)
        ]
        self.decoder_norm = keras.layers.LayerNormalization(
            epsilon=1e-6, name="decoder_norm")
        self.decoder_pred = keras.layers.Dense(
            self.patch_size * self.patch_size * 3, name="decoder_pred",
            dtype="float32")
        self.self_supervised = True
        # What `fit` logs (`fit_recipe` checks stage monitors against it).
        self.pretext_metrics = ("loss",)

    def build(self, input_shape):
        shape = (None,) + tuple(input_shape[1:])
        for layer in self.augmentation:
            if not layer.built:
                layer.build(shape)
        self.preprocessing.build(shape)
        width = int(self.backbone.output_shape[-1])
        self.decoder_embed.build((None, None, width))
        tokens = (None, self.num_patches, self.decoder_dim)
        for block in self.decoder_blocks:
            block.build(tokens)
        self.decoder_norm.build(tokens)
        self.decoder_pred.build(tokens)
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.mask_token = self.add_weight(
            shape=(1, 1, self.decoder_dim), initializer=init,
            name="mask_token")
        self.decoder_position = self.add_weight(
            shape=(1, self.num_patches, self.decoder_dim), initializer=init,
            name="decoder_position")
        self.built = True

    def features(self, images, training=False):
        """Mean patch token of `[0, 255]` images, unmasked (for probes)."""
        x = self.preprocessing(ops.cast(images, "float32"))
        tokens = self.backbone(x, training=training)
        return ops.mean(tokens[:, self.num_prefix_tokens:], axis=1)

    def call(self, images, training=False):
        images = ops.cast(images, "float32")
        if training:
            for layer in self.augmentation:
                images = layer(images, training=True)
        noise = keras.random.uniform(
            (ops.shape(images)[0], self.num_patches),
            seed=self.seed_generator)
        return self.masked_forward(images, noise, training=training)

    def masked_forward(self, images, noise, training=False):
        """Encodes the patches with the lowest `noise` (a `(batch,
        patches)` array), reconstructs every patch.

        Returns:
            A dict: `pixels`, the predicted normalised pixels `(batch,
            patches, p * p * 3)`; `targets`, the images' normalised pixels
            (the same shape); `mask`, `1.0` for hidden patches.
        """
        stem, encoder = split_backbone(self.backbone)
        x = self.preprocessing(ops.cast(images, "float32"))
        for layer in stem:
            x = layer(x, training=training)
        prefix = x[:, : self.num_prefix_tokens]
        patches = x[:, self.num_prefix_tokens :]
        order = ops.argsort(noise, axis=1)  # visible patches first
        restore = ops.argsort(order, axis=1)
        keep = order[:, : self.num_visible]
        visible = _gather(patches, keep, self.num_patches)
        x = ops.concatenate([prefix, visible], axis=1)
        for layer in encoder:
            x = layer(x, training=training)
        x = self.decoder_embed(x[:, self.num_prefix_tokens :])
        # One mask token per hidden patch (shapes from `order`: static).
        ones = ops.ones_like(ops.cast(order[:, self.num_visible :], x.dtype))
        hidden = ones[..., None] * ops.cast(self.mask_token, x.dtype)
        x = ops.concatenate([x, hidden], axis=1)
        x = _gather(x, restore, self.num_patches)
        x = x + ops.cast(self.decoder_position, x.dtype)
        for block in self.decoder_blocks:
            x = block(x, training=training)
        pixels = self.decoder_pred(self.decoder_norm(x))
        mask = ops.cast(restore >= self.num_visible, "float32")
        # From the images the encoder saw (augmented, in training).
        targets, _, _ = normalized_patches(images, self.patch_size)
        return {"pixels": pixels, "targets": targets, "mask": mask}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        error = ops.mean(
            ops.square(ops.subtract(y_pred["pixels"], y_pred["targets"])),
            axis=-1)
        mask = ops.convert_to_tensor(y_pred["mask"])
        return ops.sum(error * mask) / ops.maximum(ops.sum(mask), 1.0)

    def reconstruct(self, images, seed=0):
        """Masked inputs and reconstructions of `[0, 255]` images, for a
        look: the mask is drawn from `seed` (the same images and seed give
        the same mask every time); hidden patches are grey in the masked
        images, and the reconstructions paste the visible patches back.

        Returns:
            `(masked, reconstructed)`, `uint8` arrays shaped like `images`.
        """
        images = np.asarray(images, "float32")
        noise = np.random.default_rng(seed).uniform(
            size=(len(images), self.num_patches)).astype("float32")
        out = self.masked_forward(images, noise, training=False)
        pixels = keras.ops.convert_to_numpy(out["pixels"])
        hidden = keras.ops.convert_to_numpy(out["mask"])[..., None] > 0.5
        _, mean, std = normalized_patches(images, self.patch_size)
        mean = keras.ops.convert_to_numpy(mean)
        std = keras.ops.convert_to_numpy(std)
        original = keras.ops.convert_to_numpy(
            patchify(images / 255.0, self.patch_size))
        predicted = pixels * std + mean
        masked = np.where(hidden, 0.5, original)
        reconstructed = np.where(hidden, predicted, original)

        def to_images(patches):
            x = unpatchify(patches, self.patch_size) * 255.0
            return np.clip(np.round(x), 0, 255).astype("uint8")

        return to_images(masked), to_images(reconstructed)

    def compute_output_shape(self, input_shape):
        size = self.patch_size * self.patch_size * 3
        pixels = (input_shape[0], self.num_patches, size)
        return {"pixels": pixels, "targets": pixels,
                "mask": (input_shape[0], self.num_patches)}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "num_prefix_tokens": self.num_prefix_tokens,
                "mask_ratio": self.mask_ratio,
                "augmentation": [
                    keras.saving.serialize_keras_object(layer)
                    for layer in self.augmentation
                ],
                "scale": self.scale,
                "offset": self.offset,
                "decoder_dim": self.decoder_dim,
                "decoder_layers": self.decoder_layers,
                "decoder_heads": self.decoder_heads,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"])
        config["augmentation"] = [
            keras.saving.deserialize_keras_object(layer)
            for layer in config["augmentation"]
        ]
        return cls(**config)


def _gather(tokens, indices, count):
    """`tokens[b, indices[b, i]]` for every `b, i`, as a product with one-hot
    rows: the same on every backend, and static shapes for XLA (a gather
    with a dynamic batch size is not always XLA-compilable on TensorFlow)."""
    select = ops.one_hot(indices, count, dtype=tokens.dtype)
    return ops.matmul(select, tokens)


def _decoder_block(width, heads, index):
    """A pre-norm transformer layer of the decoder (KerasHub's
    `TransformerEncoder`, MLP twice as wide)."""
    keras_hub = hub.import_keras_hub()
    return keras_hub.layers.TransformerEncoder(
        intermediate_dim=2 * width, num_heads=heads, activation="gelu",
        normalize_first=True, layer_norm_epsilon=1e-6,
        name=f"decoder_block_{index}",
    )
