"""Keras functional models on torch: each intermediate tensor let go once
its last consumer has run, and simple layers called without `__call__`.

Keras runs a functional model's graph node by node and keeps every
intermediate output in one dictionary until the call returns
(`keras.src.ops.function.Function._run_through_graph`). On TensorFlow and
JAX the call is traced, and the compiled graph frees its buffers itself; on
torch it runs eagerly, so under `torch.no_grad()` (`predict`, the feature
pass of a cached head stage, evaluation) the memory of a call is the sum
of all its activations instead of the few that are live at once: 5.3 GB
of resident memory for EfficientNet-Lite0 at a batch of 125, 128 px. Each
new allocation of that size is fresh memory that the kernel maps and zeroes
page by page, the first call most of all. `use_early_release(True)` runs the
same nodes in the same order and drops a tensor from the dictionary when
every node that reads it has run (unless it is an output of the model).
While training, autograd keeps what the backward pass needs, as before.

Measured (2 cores, Intel Xeon, 2026-12-03, benchmarks/README.md): the
first call 1.18-1.21 s against 5.25-5.56 s, resident memory +0.48 GB
against +4.0 GB; the cached head stage's feature pass 110 img/s, 1.03x the
backbone's `predict` (54 img/s, 0.49x, before). Outputs are identical
(tests/test_torch_graph.py). `import transfer` turns it on, on torch
(`TRANSFER_TORCH_EARLY_RELEASE=0` keeps Keras's path); the run manifest
records it (`torch_graph`).

Direct calls. Each node of the graph runs through `Layer.__call__`, whose
Python (dtype conversion of the inputs, call-context and mask bookkeeping,
name and autocast scopes, `torch.nn.Module.__call__` with its hooks) costs
more than many of the kernels it wraps on a CPU: MobileNetV3Small at 160
px, batch 32, has 161 layer calls in a training step. `use_direct_calls(True)`
calls `layer.call` itself for the layers of `_direct_types()` (exactly
those classes, not subclasses) when that is all `__call__` would do: a
float32 layer (no mixed precision, no quantization), no activity
regularizer, not made under a `keras.RematScope`, no torch hooks, built,
plain float32 torch tensors as inputs with no Keras mask, `training`
given by the enclosing model (as `fit`, `predict` and `evaluate` give it)
and no other keyword argument, outside any autocast scope, stateless
scope or distribution. Anything else goes through `__call__` as before.
Measured (same machine, on and off interleaved in one process, two runs
each, benchmarks/README.md): MobileNetV3Small at 160 px, batch 32,
training step 1.05-1.09x faster (0.188 -> 0.172 s in one),
`predict_on_batch` 1.22-1.24x; EfficientNet-Lite0 at 128 px 1.00-1.06x
and 1.09-1.11x; outputs and gradients identical
(tests/test_torch_graph.py). `TRANSFER_TORCH_DIRECT_CALLS=0` keeps
`__call__`; the manifest's `torch_graph` record says which.
"""

import os
import weakref

ENV = "TRANSFER_TORCH_EARLY_RELEASE"
DIRECT_ENV = "TRANSFER_TORCH_DIRECT_CALLS"
_ORIGINAL = {}
# Per function object (a copy of a model gets its own: tensor ids differ).
_PLANS = weakref.WeakKeyDictionary()


def _plan(function):
    """`(uses, keep)`: how many nodes read each tensor id, and the ids
    never released (the function's inputs and outputs). Cached on the
    function: its graph does not change after it is built."""
    plan = _PLANS.get(function)
    if plan is None:
        uses = {}
        for nodes in function._nodes_by_depth.values():
            for node in nodes:
                if not node.operation or node.is_input:
                    continue
                for i in {id(x) for x in node.input_tensors}:
                    uses[i] = uses.get(i, 0) + 1
        keep = {id(x) for x in function.inputs}
        keep.update(id(x) for x in function.outputs)
        plan = (uses, keep)
        _PLANS[function] = plan
    return plan


def _run_through_graph(self, inputs, operation_fn=lambda op: op,
                       call_fn=None):
    """Keras's `_run_through_graph`, releasing each tensor after its last
    reader (same nodes, same order, same outputs)."""
    from keras.src import tree

    inputs = tree.flatten(inputs)
    tensor_dict = {}
    for x, y in zip(self.inputs, inputs, strict=False):
        tensor_dict[id(x)] = y
    uses, keep = _plan(self)
    remaining = dict(uses)

    depth_keys = sorted(self._nodes_by_depth, reverse=True)
    for depth in depth_keys:
        for node in self._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            if any(id(x) not in tensor_dict for x in node.input_tensors):
                continue  # not computable: its inputs simply stay
            args, kwargs = node.arguments.fill_in(tensor_dict)
            if call_fn is not None:
                outputs = call_fn(operation_fn(node.operation), *args,
                                  **kwargs)
            else:
                operation = self._get_operation_for_node(node)
                outputs = operation_fn(operation)(*args, **kwargs)
            del args, kwargs
            for x, y in zip(node.outputs, tree.flatten(outputs),
                            strict=False):
                tensor_dict[id(x)] = y
            del outputs
            for i in {id(x) for x in node.input_tensors}:
                remaining[i] -= 1
                if remaining[i] == 0 and i not in keep:
                    del tensor_dict[i]

    output_tensors = []
    for i, x in enumerate(self.outputs):
        if id(x) not in tensor_dict:
            path = tree.flatten_with_path(self._outputs_struct)[i][0]
            path = ".".join(str(p) for p in path)
            raise ValueError(
                f"Output with path `{path}` is not connected to `inputs`"
            )
        output_tensors.append(tensor_dict[id(x)])
    return tree.pack_sequence_as(self._outputs_struct, output_tensors)


def _direct_types():
    """The layer classes whose `call` may run without `__call__`: stateless
    apart from their variables, no sublayers, no masks of their own."""
    from keras.src import layers

    return frozenset((
        layers.Activation, layers.Add, layers.AveragePooling2D,
        layers.BatchNormalization, layers.Concatenate, layers.Conv2D,
        layers.Dense, layers.DepthwiseConv2D, layers.Dropout,
        layers.GlobalAveragePooling2D, layers.Identity,
        layers.LayerNormalization, layers.MaxPooling2D, layers.Multiply,
        layers.ReLU, layers.Rescaling, layers.Reshape,
        layers.SeparableConv2D, layers.ZeroPadding2D,
    ))


# "types": the allowed classes; "scoped": `_scoped_check()`; set once.
_DIRECT = {}


def _plain(args):
    """Whether every positional argument (or list item) is a float32 torch
    tensor without a Keras mask."""
    import torch

    for arg in args:
        for tensor in arg if isinstance(arg, (list, tuple)) else (arg,):
            if (type(tensor) is not torch.Tensor
                    or tensor.dtype is not torch.float32
                    or getattr(tensor, "_keras_mask", None) is not None):
                return False
    return True


def _scoped_check():
    """A function telling whether an autocast, stateless or distribution
    scope is active or a global torch module hook is set (then
    `__call__` runs); imports resolved once."""
    from keras.src import backend
    from keras.src.backend.common.stateless_scope import in_stateless_scope
    from keras.src.distribution import distribution_lib
    from torch.nn.modules import module

    def scoped():
        return (backend.get_autocast_scope() is not None
                or in_stateless_scope()
                or distribution_lib.distribution() is not None
                or bool(module._global_forward_hooks)
                or bool(module._global_forward_pre_hooks))

    return scoped


def _direct(operation, training):
    """What a functional model's call runs for `operation`: `layer.call`
    itself when `Layer.__call__` would add nothing else (checked at each
    call), else Keras's own `operation_fn` (`layer(..., training=...)`)."""
    from keras.src.models import functional

    layer = operation
    if type(layer) not in _DIRECT["types"]:
        return functional.operation_fn(layer, training=training)
    takes_training = layer._call_has_training_arg

    def call(*args, **kwargs):
        kwargs["training"] = training  # the model's value wins, as in Keras
        if (len(kwargs) != 1 or not layer.built
                or layer.activity_regularizer is not None
                or layer.dtype_policy.name != "float32"
                or getattr(layer, "_remat_mode", None)
                or layer._forward_hooks or layer._forward_pre_hooks
                or not _plain(args) or _DIRECT["scoped"]()):
            return layer(*args, **kwargs)
        if takes_training:
            return layer.call(*args, training=training)
        return layer.call(*args)

    return call


def _functional_call(self, inputs, training=None, mask=None, **kwargs):
    """Keras's `Functional.call`, calling simple layers directly (see
    `_direct`) when `training` is given and there is no mask or other
    call-context argument; otherwise Keras's own."""
    if training is None or mask is not None or kwargs:
        return _ORIGINAL["functional_call"](
            self, inputs, training=training, mask=mask, **kwargs)
    from keras.src.models import functional

    inputs = self._standardize_inputs(inputs)
    outputs = self._run_through_graph(
        inputs, operation_fn=lambda op: _direct(op, training))
    return functional.unpack_singleton(outputs)


def use_direct_calls(enabled=True):
    """Turns direct calls of simple layers' `call` on or off (torch only).

    Args:
        enabled: `True` lets functional models call `layer.call` itself for
            the layers and inputs where `Layer.__call__` adds nothing (see
            the module docstring), `False` restores Keras's path. Defaults
            to `True`.

    Returns:
        Whether they are on after the call (`False` on other backends).
    """
    import keras

    if keras.config.backend() != "torch":
        return False
    from keras.src.models import functional

    if "functional_call" not in _ORIGINAL:
        _ORIGINAL["functional_call"] = functional.Functional.call
        _DIRECT["types"] = _direct_types()
        _DIRECT["scoped"] = _scoped_check()
    functional.Functional.call = (
        _functional_call if enabled else _ORIGINAL["functional_call"])
    return enabled


def use_early_release(enabled=True):
    """Turns early release of intermediate tensors on or off (torch only).

    Args:
        enabled: `True` makes Keras functional models drop each
            intermediate tensor after its last reader, `False` restores
            Keras's path. Defaults to `True`.

    Returns:
        Whether it is on after the call (`False` on other backends).
    """
    import keras

    if keras.config.backend() != "torch":
        return False
    from keras.src.ops import function

    if "run" not in _ORIGINAL:
        _ORIGINAL["run"] = function.Function._run_through_graph
    function.Function._run_through_graph = (
        _run_through_graph if enabled else _ORIGINAL["run"])
    return enabled


def state():
    """The manifest's record: `None` off torch, else whether it is on and
    how to change it."""
    import keras

    if keras.config.backend() != "torch":
        return None
    from keras.src.ops import function

    enabled = function.Function._run_through_graph is _run_through_graph
    from keras.src.models import functional

    direct = functional.Functional.call is _functional_call
    return {
        "early_release": enabled,
        "how": f"{ENV}=0 turns it off" if enabled else f"off ({ENV}=0)",
        "direct_calls": direct,
        "direct_calls_how": (f"{DIRECT_ENV}=0 turns it off" if direct
                             else f"off ({DIRECT_ENV}=0)"),
    }


def automatic():
    """Applies the defaults (early release and direct calls on, unless
    `TRANSFER_TORCH_EARLY_RELEASE` or `TRANSFER_TORCH_DIRECT_CALLS` is
    `0`); returns the manifest's record, or `None` off torch."""
    import keras

    if keras.config.backend() != "torch":
        return None
    use_early_release(os.environ.get(ENV, "1") != "0")
    use_direct_calls(os.environ.get(DIRECT_ENV, "1") != "0")
    return state()
