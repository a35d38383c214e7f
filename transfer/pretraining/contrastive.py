"""`ContrastivePretrainer`: a backbone trained with SimCLR on unlabelled images.

A plain `keras.Model` subclass (no custom training loop): `call` draws two
augmented views of every image (`keras.layers` augmentations, active in
training only), runs both through the backbone, global average pooling and
a small projection head, and `compute_loss` applies the normalized
temperature-scaled cross-entropy (NT-Xent) of SimCLR (Chen et al., 2020):
each view must pick its partner among the other `2 * batch - 1` views of
the batch. The same code trains on TensorFlow, JAX and torch.
"""

import keras
from keras import ops

from transfer.models.pooling import TokenPooling

# Larger than any cosine similarity / temperature: masks a view's
# similarity with itself.
_LARGE = 1e9


def nt_xent(projections, temperature):
    """SimCLR loss and pretext accuracy of `(batch, 2, dim)` projections.

    Returns:
        `(loss, accuracy)`: the mean NT-Xent over the `2 * batch` views, and
        the share of views whose most similar other view is their partner.
    """
    z = ops.normalize(ops.cast(projections, "float32"), axis=-1)
    a, b = z[:, 0], z[:, 1]
    batch = ops.shape(z)[0]
    self_mask = ops.one_hot(ops.arange(batch), batch) * _LARGE
    logits_ab = ops.matmul(a, ops.transpose(b)) / temperature
    logits_aa = ops.matmul(a, ops.transpose(a)) / temperature - self_mask
    logits_ba = ops.matmul(b, ops.transpose(a)) / temperature
    logits_bb = ops.matmul(b, ops.transpose(b)) / temperature - self_mask
    # Row i: the partner of view i is column i (of the other view's block).
    logits = ops.concatenate(
        [
            ops.concatenate([logits_ab, logits_aa], axis=1),
            ops.concatenate([logits_ba, logits_bb], axis=1),
        ],
        axis=0,
    )
    labels = ops.concatenate([ops.arange(batch), ops.arange(batch)], axis=0)
    loss = ops.mean(
        keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True
        )
    )
    hits = ops.cast(ops.equal(ops.argmax(logits, axis=1), labels), "float32")
    return loss, ops.mean(hits)


@keras.saving.register_keras_serializable(package="transfer")
class ContrastivePretrainer(keras.Model):
    """SimCLR pretraining of a backbone: augment twice, embed, contrast.

    Fit it on unlabelled images (RGB, pixels in `[0, 255]`) with
    `model.fit(x)` after `model.compile(optimizer)`, or through
    `transfer.fit_recipe` (what `transfer.pretrain_images` does). The logs
    show the NT-Xent `loss` and the pretext `accuracy` (how often a view's
    nearest other view in the batch is its partner). `model.backbone` is the
    trained backbone, ready for `build_classifier` once saved.

    Args:
        backbone: a backbone `keras.Model` (images to a feature map), named
            after its registry key.
        augmentation: a list of `keras.layers` that map an image batch to
            a batch of the same shape; each view draws them anew.
        scale: preprocessing multiplier, as `BackboneSpec.scale`.
            Defaults to `1.0`.
        offset: preprocessing offset, as `BackboneSpec.offset`.
            Defaults to `0.0`.
        projection_dim: output size of the projection head.
            Defaults to `64`.
        temperature: NT-Xent temperature. Defaults to `0.2`.
        num_prefix_tokens: for a vision transformer (tokens out), the
            class and register tokens left out of the mean of the patch
            tokens. Defaults to `0`.

    Example:

    >>> backbone, spec, _ = transfer.build_backbone("small_cnn", weights=None)
    >>> model = transfer.pretraining.contrastive.ContrastivePretrainer(
    ...     backbone, transfer.pretraining.images.default_augmentation(32),
    ...     scale=spec.scale, offset=spec.offset)
    >>> x, _ = transfer.synthetic_images(8, 32)
    >>> tuple(model(x, training=True).shape)  # 2 augmented views per image
    (8, 2, 64)
    >>> tuple(model.features(x).shape)  # pooled backbone features
    (8, 128)

    Then train it (`transfer.pretrain_images` does it through
    `fit_recipe`):

    ```python
    model.compile(keras.optimizers.Adam(1e-3))
    model.fit(x, batch_size=8, epochs=10)
    ```
    """

    def __init__(self, backbone, augmentation, scale=1.0, offset=0.0,
                 projection_dim=64, temperature=0.2, num_prefix_tokens=0,
                 **kwargs):
        super().__init__(**kwargs)
        self.augmentation = list(augmentation)
        self.scale = scale
        self.offset = offset
        self.projection_dim = projection_dim
        self.temperature = temperature
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.preprocessing = keras.layers.Rescaling(
            scale, offset, name="preprocessing"
        )
        self.backbone = backbone
        if len(backbone.output_shape) == 3:  # a vision transformer's tokens
            self.pooler = TokenPooling(
                "avg", num_prefix_tokens=num_prefix_tokens, name="pooler")
        else:
            self.pooler = keras.layers.GlobalAveragePooling2D(name="pooler")
        width = int(backbone.output_shape[-1])
        self.projection_hidden = keras.layers.Dense(
            width, activation="relu", name="projection_hidden"
        )
        self.projection = keras.layers.Dense(
            projection_dim, name="projection", dtype="float32"
        )
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.self_supervised = True

    def build(self, input_shape):
        shape = (None,) + tuple(input_shape[1:])
        for layer in self.augmentation:
            if not layer.built:
                layer.build(shape)
        self.preprocessing.build(shape)
        width = int(self.backbone.output_shape[-1])
        self.projection_hidden.build((None, width))
        self.projection.build((None, width))
        self.built = True

    def features(self, images, training=False):
        """Pooled backbone features of `[0, 255]` images (no projection)."""
        x = self.preprocessing(ops.cast(images, "float32"))
        return self.pooler(self.backbone(x, training=training))

    def call(self, images, training=False):
        images = ops.cast(images, "float32")
        views = []
        for _ in range(2):
            x = images
            if training:
                for layer in self.augmentation:
                    x = layer(x, training=True)
            h = self.features(x, training=training)
            views.append(self.projection(self.projection_hidden(h)))
        return ops.stack(views, axis=1)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        loss, accuracy = nt_xent(y_pred, self.temperature)
        self.accuracy_tracker.update_state(accuracy)
        return loss

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2, self.projection_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "augmentation": [
                    keras.saving.serialize_keras_object(layer)
                    for layer in self.augmentation
                ],
                "scale": self.scale,
                "offset": self.offset,
                "projection_dim": self.projection_dim,
                "temperature": self.temperature,
                "num_prefix_tokens": self.num_prefix_tokens,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"]
        )
        config["augmentation"] = [
            keras.saving.deserialize_keras_object(layer)
            for layer in config["augmentation"]
        ]
        return cls(**config)
