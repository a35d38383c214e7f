"""`TokenPooling`: a transformer's token sequence to one vector per image."""

import keras

MODES = ("token", "avg")


@keras.saving.register_keras_serializable(package="transfer")
class TokenPooling(keras.layers.Layer):
    """Pools `(batch, tokens, dim)` transformer outputs to `(batch, dim)`.

    The first `num_prefix_tokens` tokens are the class token and any
    distillation or register tokens; the rest are patch tokens. `"token"`
    takes the class token (the first), `"avg"` the mean of the patch tokens.

    Args:
        mode: `"token"` or `"avg"`. Defaults to `"token"`.
        num_prefix_tokens: tokens before the patch tokens. Defaults to `1`.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    >>> tokens = np.arange(2 * 3 * 2, dtype="float32").reshape(2, 3, 2)
    >>> keras.ops.convert_to_numpy(TokenPooling("token")(tokens)).tolist()
    [[0.0, 1.0], [6.0, 7.0]]
    >>> keras.ops.convert_to_numpy(TokenPooling("avg")(tokens)).tolist()
    [[3.0, 4.0], [9.0, 10.0]]
    """

    def __init__(self, mode="token", num_prefix_tokens=1, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(
                f"`mode` must be one of {MODES}. Received: mode={mode!r}"
            )
        if mode == "token" and num_prefix_tokens < 1:
            raise ValueError(
                "Token pooling needs a class token, and this backbone has "
                "none: use pooling='avg'. "
                f"Received: num_prefix_tokens={num_prefix_tokens!r}"
            )
        self.mode = mode
        self.num_prefix_tokens = int(num_prefix_tokens)

    def call(self, inputs):
        if self.mode == "token":
            return inputs[:, 0, :]
        return keras.ops.mean(inputs[:, self.num_prefix_tokens:, :], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {"mode": self.mode, "num_prefix_tokens": self.num_prefix_tokens}
        )
        return config
