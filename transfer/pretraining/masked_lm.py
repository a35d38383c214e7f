"""Domain-adaptive masked-language-model pretraining of a text encoder.

Continues BERT-style pretraining (KerasHub's `MaskedLM` task and
preprocessor, 15% of tokens selected by default) on unlabelled in-domain
text, through `fit_recipe` like any other stage, then saves the adapted
encoder as a KerasHub preset directory that `build_text_classifier` accepts.
"""

import logging
import os
import warnings

import keras
import numpy as np

from transfer.data.text import check_texts
from transfer.models.text import build_text_backbone
from transfer.training.fit import fit_recipe
from transfer.training.recipe import Stage

logger = logging.getLogger(__name__)


def masked_batches(preprocessor, texts, *, batch_size=32, seed=0):
    """Masks `texts` once, reproducibly, for comparable MLM evaluations.

    Returns:
        A list of `(x, y, sample_weight)` NumPy batches.
    """
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    ds = tf.data.Dataset.from_tensor_slices(list(texts)).batch(batch_size)
    ds = ds.map(preprocessor, num_parallel_calls=1, deterministic=True)
    return [
        keras.tree.map_structure(lambda t: t.numpy(), batch) for batch in ds
    ]


def masked_lm_metrics(model, batches):
    """Masked-token loss and accuracy of a `MaskedLM` on fixed batches."""
    total_loss = total_correct = total_weight = 0.0
    for x, y, weight in batches:
        logits = keras.ops.convert_to_numpy(model(x, training=False))
        logits = logits - logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        picked = np.take_along_axis(log_probs, y[..., None].astype("int64"), -1)[..., 0]
        total_loss += float(-(picked * weight).sum())
        total_correct += float(((logits.argmax(-1) == y) * weight).sum())
        total_weight += float(weight.sum())
    return {
        "loss": total_loss / max(total_weight, 1.0),
        "accuracy": total_correct / max(total_weight, 1.0),
    }


class HeldOutMaskedLM(keras.callbacks.Callback):
    """Measures masked-LM loss and accuracy on fixed held-out batches.

    Records `(epoch, metrics)` at the start and the end of every `fit`
    (every recipe stage), so the value before encoder adaptation and after
    it can be read from `history`.

    Args:
        batches: `(x, y, sample_weight)` batches from `masked_batches`.
    """

    def __init__(self, batches):
        super().__init__()
        self.batches = batches
        self.history = []

    def on_train_begin(self, logs=None):
        self._measure("begin")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_end(self, logs=None):
        self._measure("end")

    def _measure(self, when):
        metrics = masked_lm_metrics(self.model, self.batches)
        self.history.append((when, getattr(self, "_epoch", None), metrics))
        logger.info("Held-out masked LM at train %s: %s", when, metrics)


def pretrain_masked_lm(
    texts,
    *,
    run_dir,
    backbone="minilm_l6",
    epochs=1,
    learning_rate=5e-5,
    sequence_length=128,
    mask_rate=0.15,
    batch_size=16,
    validation_texts=None,
    head_epochs=1,
):
    """Continues masked-LM pretraining of a text encoder on unlabelled text.

    Two `fit_recipe` stages into `run_dir`: `mlm_head` trains the masked-LM
    head alone with the encoder frozen (checkpoints such as all-MiniLM-L6-v2
    ship no MLM head, so it starts random), then `mlm` adapts the whole
    encoder. TensorBoard logs show the MLM loss and the masked-token accuracy
    (`accuracy`). The held-out MLM loss "before" is measured after the head
    stage (original encoder, fitted head), "after" at the end, on the same
    fixed masking. The adapted encoder and its tokenizer are saved as a
    KerasHub preset in `run_dir/encoder`: pass that directory to
    `build_text_classifier` to fine-tune it.

    Args:
        texts: unlabelled training texts (a list of strings).
        run_dir: run directory (logs, checkpoints, manifest, encoder).
        backbone: the encoder to continue from. Defaults to `"minilm_l6"`.
        epochs: encoder-adaptation epochs. Defaults to `1`.
        learning_rate: Adam learning rate of the adaptation.
            Defaults to `5e-5`.
        sequence_length: tokens per text. Defaults to `128`.
        mask_rate: share of tokens selected for masking. Defaults to `0.15`.
        batch_size: batch size. Defaults to `16`.
        validation_texts: held-out texts for the before/after measurement.
            Defaults to `None`.
        head_epochs: epochs of the head-only stage (0 skips it).
            Defaults to `1`.

    Returns:
        A dict: `encoder` (preset directory), `before` and `after` (held-out
        MLM `loss` and `accuracy`, or `None`), `initial` (with the untrained
        head), `seconds`.

    Raises:
        ValueError: a bad `mask_rate`, empty texts, or fewer texts than
            `batch_size`; raised before any model is built.

    Example:

    >>> # Inputs are checked before the encoder is loaded:
    >>> transfer.text.pretrain_masked_lm(
    ...     ["the sky is blue", "the sea is green"], run_dir="runs/mlm")
    Traceback (most recent call last):
        ...
    ValueError: Masked-LM pretraining needs at least one batch: 2 texts for
    batch_size=16. Add texts or lower batch_size.

    A run, then a classifier on the adapted encoder (not run as a doctest:
    adapting MiniLM's 22M weights takes minutes on a CPU and writes about
    1 GB into `run_dir`):

    ```python
    result = transfer.text.pretrain_masked_lm(
        unlabelled_texts, run_dir="runs/mlm", validation_texts=held_out)
    result["before"], result["after"]  # held-out MLM loss and accuracy
    model = transfer.text.build_text_classifier(result["encoder"], 2)
    ```
    """
    import time

    import keras_hub

    if not 0 < mask_rate < 1:
        raise ValueError(f"`mask_rate` must be in (0, 1). Received: mask_rate={mask_rate!r}")
    texts = check_texts(texts, "pretraining texts")
    if len(texts) < batch_size:
        raise ValueError(
            f"Masked-LM pretraining needs at least one batch: {len(texts)} "
            f"texts for batch_size={batch_size}. Add texts or lower batch_size."
        )
    if validation_texts is not None:
        validation_texts = check_texts(validation_texts, "validation texts")
    started = time.perf_counter()
    encoder, preset, spec, info = build_text_backbone(backbone)
    preprocessor = keras_hub.models.MaskedLMPreprocessor.from_preset(
        preset, sequence_length=sequence_length, mask_selection_rate=mask_rate
    )
    model = keras_hub.models.MaskedLM.from_preset(
        preset, backbone=encoder, preprocessor=preprocessor
    )
    model.transfer_metadata = {
        "backbone": spec.name,
        "modality": "text",
        "task": "masked_lm",
        "mask_rate": mask_rate,
        "sequence_length": sequence_length,
        "weights": info,
    }
    callbacks = []
    if validation_texts:
        evaluation = HeldOutMaskedLM(
            masked_batches(preprocessor, validation_texts, batch_size=32)
        )
        callbacks.append(evaluation)
    stages = [Stage("mlm", epochs, learning_rate, trainable_blocks="all")]
    if head_epochs:
        stages.insert(0, Stage("mlm_head", head_epochs, 1e-3, trainable_blocks=0))
    with warnings.catch_warnings():
        # The encoder's pooler (`pooled_dense`) serves classification only:
        # the MLM loss gives it no gradient, and Adam leaves it unchanged.
        warnings.filterwarnings(
            "ignore", message=r"Gradients do not exist for variables \['pooled"
        )
        fit_recipe(
            model,
            stages,
            texts,
            validation_data=None,
            run_dir=run_dir,
            batch_size=batch_size,
            callbacks=callbacks,
            verbose=2,
        )
    initial = before = after = None
    if validation_texts:
        records = [metrics for _, _, metrics in evaluation.history]
        initial, after = records[0], records[-1]
        # Start of the encoder stage: original encoder with a fitted head.
        before = records[2] if head_epochs else records[0]
    encoder_dir = os.path.join(run_dir, "encoder")
    model.backbone.save_to_preset(encoder_dir)
    preprocessor.tokenizer.save_to_preset(encoder_dir)
    return {
        "encoder": encoder_dir,
        "initial": initial,
        "before": before,
        "after": after,
        "seconds": round(time.perf_counter() - started, 2),
    }
