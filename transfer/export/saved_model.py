"""The SavedModel writer: the float signature, plus encoded images on TF.

`serve` (also `serving_default`) takes what the Keras model takes: float32
pixels `(batch, height, width, 3)` in `[0, 255]`, and returns its outputs,
as `model.export(format="tf_saved_model")` writes it.

On the TensorFlow backend a second signature, `serve_images`, takes a batch
of encoded images (JPEG, PNG, GIF or BMP bytes, `tf.string` of shape
`(batch,)`) and does in the graph what `transfer predict` does before the
model: decode to RGB (`tf.io.decode_image(channels=3)`: grayscale is
repeated, alpha dropped), resize to the model's size with the run's
interpolation (bilinear unless the run says otherwise, as Keras's
`image_dataset_from_directory` resizes training images), then the model
(whose `Rescaling` is inside it) and a softmax when it returns logits,
with the run's temperature (`transfer.calibration`) as `transfer predict`
applies it. It
returns `probabilities` `(batch, num_classes)`, `top_class` (the best class
name per image), `top_probability` and `class_names` `(num_classes,)`.

On JAX the SavedModel is written by `jax2tf`, which converts JAX functions
only: decoding is a TensorFlow op, so JAX exports have `serve` alone (the
metadata names the preprocessing to do before it). torch does not export
SavedModels without torch_xla (`transfer._backend.EXPORT_BACKENDS`).
"""

import keras

from transfer import _backend

# The signature that takes encoded images, where the backend writes it.
IMAGE_SIGNATURE = "serve_images"


def write_saved_model(model, path, meta):
    """Writes `model` as a SavedModel at `path` (a new directory).

    Args:
        model: the image classifier (called at least once).
        path: the directory to create.
        meta: `artifact_metadata(model, "saved_model")`: class names,
            input size, interpolation and output kind for `serve_images`.

    Returns:
        The signature names written, e.g. `["serve", "serve_images"]`.
    """
    archive = keras.export.ExportArchive()
    shape = (None, *meta["input"]["shape"])
    # As `model.export(format="tf_saved_model")` writes it.
    archive.track_and_add_endpoint(
        "serve", model, [keras.InputSpec(shape=shape, dtype="float32")]
    )
    names = ["serve"]
    if _backend.writes_image_signature():
        import tensorflow as tf  # optional heavy dependency: the graph's ops

        archive.add_endpoint(
            IMAGE_SIGNATURE,
            _encoded_images_fn(model, meta),
            input_signature=[tf.TensorSpec((None,), tf.string, name="images")],
        )
        names.append(IMAGE_SIGNATURE)
    archive.write_out(path, verbose=False)
    return names


def _encoded_images_fn(model, meta):
    import tensorflow as tf  # optional heavy dependency: the graph's ops

    height, width = meta["preprocessing"]["resize"]
    method = meta["preprocessing"]["interpolation"]
    class_names = tf.constant(meta["class_names"])
    logits = meta["output"] == "logits"
    # The run's temperature (`transfer.calibration`), as `transfer predict`
    # applies it: softmax(logits / T).
    temperature = float((meta.get("calibration") or {}).get("temperature")
                        or 1.0)

    def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image.set_shape((None, None, 3))
        # `transfer predict` skips the resize for images already at size;
        # a same-size bilinear resize returns the pixels unchanged anyway.
        return tf.image.resize(image, (height, width), method=method)

    def serve_images(images):
        pixels = tf.map_fn(
            decode, images,
            fn_output_signature=tf.TensorSpec((height, width, 3), tf.float32),
        )
        outputs = tf.cast(model(pixels, training=False), tf.float32)
        if logits:
            probabilities = tf.nn.softmax(outputs / temperature, axis=-1)
        elif temperature != 1.0:
            probabilities = tf.nn.softmax(
                tf.math.log(tf.maximum(outputs, 1e-12)) / temperature, axis=-1)
        else:
            probabilities = outputs
        best = tf.argmax(probabilities, axis=-1)
        return {
            "probabilities": probabilities,
            "top_class": tf.gather(class_names, best),
            "top_probability": tf.reduce_max(probabilities, axis=-1),
            "class_names": class_names,
        }

    return serve_images
