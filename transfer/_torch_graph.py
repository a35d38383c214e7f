"""Keras functional models on torch: each intermediate tensor let go once
its last consumer has run.

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
backbone's `predict` (54 img/s, 0.49x, before). Outputs are identical (tests/test_torch_graph.py). `import
transfer` turns it on, on torch (`TRANSFER_TORCH_EARLY_RELEASE=0` keeps
Keras's path); the run manifest records it (`torch_graph`).
"""

import os
import weakref

ENV = "TRANSFER_TORCH_EARLY_RELEASE"
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

    if not _ORIGINAL:
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
    return {
        "early_release": enabled,
        "how": f"{ENV}=0 turns it off" if enabled else f"off ({ENV}=0)",
    }


def automatic():
    """Applies the default (on, unless `TRANSFER_TORCH_EARLY_RELEASE` is
    `0`); returns the manifest's record, or `None` off torch."""
    import keras

    if keras.config.backend() != "torch":
        return None
    use_early_release(os.environ.get(ENV, "1") != "0")
    return state()
